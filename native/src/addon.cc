// N-API binding of the engine. Batch calls run as AsyncWorkers on libuv's
// thread pool; key and gradient Buffers are read in place (the wrapper keeps
// them referenced until the callback) and pulled rows are handed back as an
// external Buffer, so no row is copied between C++ and JS.
#include <malloc.h>
#include <napi.h>
#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include "common.h"
#include "engine.h"
#include "layout.h"
#include "scratch_budget.h"

using namespace pmemps;

namespace {

Napi::Error to_js(Napi::Env env, const Error& e) { return Napi::Error::New(env, std::string(e.code_name()) + ": " + e.what()); }

Napi::Error to_js(Napi::Env env, const std::exception& e) { return Napi::Error::New(env, std::string("INTERNAL: ") + e.what()); }

[[noreturn]] void bad(const std::string& m) { throw Error(Code::InvalidArgument, m); }

Napi::Buffer<uint8_t> buffer_arg(const Napi::CallbackInfo& info, size_t i, const char* what) {
  if (!info[i].IsBuffer()) bad(std::string(what) + " must be a Buffer");
  return info[i].As<Napi::Buffer<uint8_t>>();
}

OptimizerSpec opt_from(uint32_t type, const Napi::Value& v) {
  if (type > 4) bad("unknown optimizer");
  if (!v.IsTypedArray()) bad("hyperparameters must be a Float64Array");
  auto a = v.As<Napi::Float64Array>();
  OptimizerSpec s{};
  s.type = static_cast<OptType>(type);
  for (size_t i = 0; i < a.ElementLength() && i < kMaxHyper; i++) s.h[i] = a[i];
  return s;
}

Napi::Float64Array f64(Napi::Env env, const double* p, size_t n) {
  auto a = Napi::Float64Array::New(env, n);
  for (size_t i = 0; i < n; i++) a[i] = p[i];
  return a;
}

// Buffers of pulled rows. A large one (1 MiB for 4,096 x dim 64, 16 MiB for
// the SDK's largest chunk) is a mapping of its own, made on the pool thread
// that fills it. Released, it is kept for reuse or unmapped on a thread of
// its own — never on the event loop, where an mmap or munmap would wait for
// the process's address-space lock behind the page faults of the pulls
// running on the pool (measured: up to 5 ms each), and never through
// malloc, whose arenas would keep the pages of the pool threads' buffers
// after they are freed.
//
// Invariants:
//  * A buffer is released only when V8 collects its Buffer, and V8
//    collects young ArrayBuffers some 32 MiB at a time (proto/gc-headroom.ts):
//    kept_ holds up to kCacheBytes, enough for one collection's worth of
//    replies to be reused, so a pull in a steady stream fills pages that are
//    already mapped (a fresh 1 MiB buffer costs 256 page faults, a fifth of
//    a cached pull's CPU: BENCHMARKS.md, "Pull buffers kept for reuse").
//  * A buffer is either referenced by JavaScript, kept, or queued for
//    unmapping, and a kept one that fits is reused before any is mapped: the
//    buffers mapped at once are at most what JavaScript holds plus
//    kCacheBytes kept (plus any queued for unmapping). With replies of one
//    size, never more than the most JavaScript held at once.
//  * Kept buffers go back to the system when idle: each kTrimPeriod, as
//    many as sat unused through the whole period (the fewest kept_ held
//    during it) are unmapped, the oldest first (alloc takes from the back).
class RowBuffers {
 public:
  struct Buf {
    uint8_t* p;
    size_t cap;  // bytes mapped (0: from malloc)
  };
  static constexpr size_t kMapBytes = 256 * 1024;
  static constexpr size_t kCacheBytes = 64 << 20;
  static constexpr std::chrono::milliseconds kTrimPeriod{1000};

  /** On the pool thread. */
  static Buf alloc(size_t bytes) {
    if (bytes < kMapBytes) {
      auto* p = static_cast<uint8_t*>(std::malloc(bytes ? bytes : 1));
      if (!p) throw std::bad_alloc();
      return {p, 0};
    }
    const size_t cap = round_up(bytes);
    RowBuffers& r = get();
    {
      // The smallest kept buffer that fits, if it is not more than twice the
      // need; of equals, the one released last.
      std::lock_guard<std::mutex> g(r.mu_);
      size_t best = r.kept_.size();
      for (size_t i = r.kept_.size(); i-- > 0;)
        if (r.kept_[i].cap >= cap && r.kept_[i].cap <= 2 * cap && (best == r.kept_.size() || r.kept_[i].cap < r.kept_[best].cap)) best = i;
      if (best < r.kept_.size()) {
        Buf b = r.kept_[best];
        r.kept_.erase(r.kept_.begin() + static_cast<std::ptrdiff_t>(best));
        r.kept_bytes_ -= b.cap;
        r.fewest_kept_ = std::min(r.fewest_kept_, r.kept_.size());
        return b;
      }
    }
    void* p = mmap(nullptr, cap, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw std::bad_alloc();
    r.maps_.fetch_add(1, std::memory_order_relaxed);
    return {static_cast<uint8_t*>(p), cap};
  }

  /** What the tests and an operator's probe see: bytes kept now, buffers mapped since the start. */
  static std::pair<size_t, uint64_t> stats() {
    RowBuffers& r = get();
    std::lock_guard<std::mutex> g(r.mu_);
    return {r.kept_bytes_, r.maps_.load(std::memory_order_relaxed)};
  }

  /** From any thread (the event loop's finalizers): no system call on the caller's thread. */
  static void release(Buf b) {
    if (!b.p) return;
    if (b.cap == 0) {
      std::free(b.p);
      return;
    }
    RowBuffers& r = get();
    {
      std::lock_guard<std::mutex> g(r.mu_);
      if (r.kept_bytes_ + b.cap <= kCacheBytes) {
        const bool was_empty = r.kept_.empty();
        r.kept_.push_back(b);
        r.kept_bytes_ += b.cap;
        if (!was_empty) return;  // the thread already counts time toward a trim
      } else {
        r.unmap_.push_back(b);
      }
    }
    r.cv_.notify_one();
  }

 private:
  static size_t round_up(size_t n) { return (n + 65535) & ~static_cast<size_t>(65535); }
  static RowBuffers& get() {
    static RowBuffers* r = new RowBuffers();  // never destroyed: its thread may outlive static destructors
    return *r;
  }
  RowBuffers() {
    std::thread([this] { run(); }).detach();
  }
  void run() {
    using Clock = std::chrono::steady_clock;
    std::vector<Buf> batch;
    Clock::time_point period_start = Clock::now();
    for (;;) {
      {
        std::unique_lock<std::mutex> g(mu_);
        if (kept_.empty()) {
          cv_.wait(g, [this] { return !unmap_.empty() || !kept_.empty(); });
          if (unmap_.empty()) {
            // Buffers kept again after an idle spell: a period starts now.
            period_start = Clock::now();
            fewest_kept_ = kept_.size();
          }
        } else {
          cv_.wait_until(g, period_start + kTrimPeriod, [this] { return !unmap_.empty(); });
        }
        batch.swap(unmap_);
        if (Clock::now() >= period_start + kTrimPeriod) {
          const size_t idle = std::min(fewest_kept_, kept_.size());
          for (size_t i = 0; i < idle; i++) {
            kept_bytes_ -= kept_[i].cap;
            batch.push_back(kept_[i]);
          }
          kept_.erase(kept_.begin(), kept_.begin() + static_cast<std::ptrdiff_t>(idle));
          fewest_kept_ = kept_.size();
          period_start = Clock::now();
        }
      }
      for (const Buf& b : batch) munmap(b.p, b.cap);
      batch.clear();
    }
  }
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<Buf> kept_;  // oldest first
  size_t kept_bytes_ = 0;
  size_t fewest_kept_ = 0;  // the fewest kept_ held since the period began
  std::vector<Buf> unmap_;
  std::atomic<uint64_t> maps_{0};
};

// Runs fn on the thread pool; calls back (err) or (null, result of make).
class Job : public Napi::AsyncWorker {
 public:
  using Work = std::function<void()>;
  using Make = std::function<Napi::Value(Napi::Env)>;
  Job(Napi::Function cb, Work w, Make m, std::vector<Napi::Value> keep, Work on_error = nullptr)
      : Napi::AsyncWorker(cb, "pmemps"), work_(std::move(w)), make_(std::move(m)), on_error_(std::move(on_error)) {
    for (auto& v : keep) refs_.push_back(Napi::Persistent(v.As<Napi::Object>()));
  }
  void Execute() override {
    try {
      work_();
    } catch (const Error& e) {
      code_ = e.code_name();
      SetError(e.what());
    } catch (const std::bad_alloc&) {
      code_ = "INTERNAL";
      SetError("out of memory");
    } catch (const std::exception& e) {
      code_ = "INTERNAL";
      SetError(e.what());
    }
  }
  void OnOK() override {
    Napi::Env env = Env();
    Callback().Call({env.Null(), make_ ? make_(env) : env.Undefined()});
  }
  void OnError(const Napi::Error& e) override {
    Napi::Env env = Env();
    if (on_error_) on_error_();
    Callback().Call({Napi::Error::New(env, code_ + ": " + e.Message()).Value()});
  }

 private:
  Work work_;
  Make make_;
  Work on_error_;
  std::vector<Napi::ObjectReference> refs_;
  std::string code_;
};

class NativeEngine : public Napi::ObjectWrap<NativeEngine> {
 public:
  static Napi::Function Init(Napi::Env env) {
    return DefineClass(env, "NativeEngine",
                       {
                           InstanceMethod("openInfo", &NativeEngine::OpenInfoJs),
                           InstanceMethod("createTable", &NativeEngine::CreateTable),
                           InstanceMethod("updateTable", &NativeEngine::UpdateTable),
                           InstanceMethod("dropTable", &NativeEngine::DropTable),
                           InstanceMethod("listTables", &NativeEngine::ListTables),
                           InstanceMethod("pull", &NativeEngine::Pull),
                           InstanceMethod("push", &NativeEngine::Push),
                           InstanceMethod("prepare", &NativeEngine::Prepare),
                           InstanceMethod("commit", &NativeEngine::Commit),
                           InstanceMethod("abort", &NativeEngine::Abort),
                           InstanceMethod("rollback", &NativeEngine::Rollback),
                           InstanceMethod("committedCheckpoint", &NativeEngine::Committed),
                           InstanceMethod("stats", &NativeEngine::StatsJs),
                           InstanceMethod("close", &NativeEngine::Close),
                           InstanceMethod("reserveCloseRecord", &NativeEngine::ReserveCloseRecord),
                           InstanceMethod("check", &NativeEngine::Check),
                           InstanceMethod("raiseBallot", &NativeEngine::RaiseBallot),
                           InstanceMethod("identity", &NativeEngine::IdentityJs),
                           InstanceMethod("setIdentity", &NativeEngine::SetIdentity),
                       });
  }

  NativeEngine(const Napi::CallbackInfo& info) : Napi::ObjectWrap<NativeEngine>(info) {
    Napi::Env env = info.Env();
    try {
      if (!info[0].IsObject()) bad("options object required");
      auto o = info[0].As<Napi::Object>();
      EngineOptions opts;
      opts.dir = o.Get("dir").As<Napi::String>().Utf8Value();
      opts.pool_bytes = static_cast<uint64_t>(o.Get("poolBytes").As<Napi::Number>().Int64Value());
      opts.cache_bytes = static_cast<uint64_t>(o.Get("cacheBytes").As<Napi::Number>().Int64Value());
      opts.memory_only = o.Get("memoryOnly").As<Napi::Boolean>().Value();
      opts.layout = o.Get("layout").As<Napi::Number>().Uint32Value();
      opts.inspect = o.Get("inspect").As<Napi::Boolean>().Value();
      const double scratch = o.Get("scratchBytes").As<Napi::Number>().DoubleValue();
      if (!(scratch >= 1)) bad("scratchBytes must be positive");
      if (opts.layout != kLayoutInPlace && opts.layout != kLayoutLogged && opts.layout != kLayoutAuto) bad("unknown pool layout");
      engine_ = std::make_shared<Engine>(opts);
      // Set once the engine opened: a failed open changes nothing.
      ScratchBudget::get().set_budget(static_cast<uint64_t>(scratch));
    } catch (const Error& e) {
      to_js(env, e).ThrowAsJavaScriptException();
    } catch (const std::exception& e) {
      to_js(env, e).ThrowAsJavaScriptException();
    }
  }

 private:
  template <typename F>
  Napi::Value Guard(const Napi::CallbackInfo& info, F f) {
    try {
      return f();
    } catch (const Error& e) {
      to_js(info.Env(), e).ThrowAsJavaScriptException();
    } catch (const std::exception& e) {
      to_js(info.Env(), e).ThrowAsJavaScriptException();
    }
    return info.Env().Undefined();
  }

  Napi::Function cb_arg(const Napi::CallbackInfo& info, size_t i) {
    if (!info[i].IsFunction()) bad("callback required");
    return info[i].As<Napi::Function>();
  }

  Napi::Value OpenInfoJs(const Napi::CallbackInfo& info) {
    return Guard(info, [&]() -> Napi::Value {
      auto i = engine_->open_info();
      auto o = Napi::Object::New(info.Env());
      o.Set("created", i.created);
      o.Set("cleanClose", i.clean_close);
      o.Set("isPmem", i.is_pmem);
      o.Set("committed", i.committed ? Napi::Number::New(info.Env(), static_cast<double>(i.committed)) : info.Env().Null());
      o.Set("prepared", i.prepared ? Napi::Number::New(info.Env(), static_cast<double>(i.prepared)) : info.Env().Null());
      o.Set("pushesBlocked", i.pushes_blocked);
      o.Set("opens", static_cast<double>(i.opens));
      o.Set("layout", i.layout == kLayoutLogged ? "logged" : "inplace");
      o.Set("replayedRecords", static_cast<double>(i.replayed));
      o.Set("replayWrites", static_cast<double>(i.replay_writes));
      o.Set("logPwrite", i.log_pwrite);
      o.Set("slotPwrite", i.slot_pwrite);
      o.Set("closeRecord",
            i.clean_close ? Napi::Buffer<char>::Copy(info.Env(), i.close_record.data(), i.close_record.size()).As<Napi::Value>() : info.Env().Null());
      return o;
    });
  }

  Napi::Value CreateTable(const Napi::CallbackInfo& info) {
    return Guard(info, [&]() -> Napi::Value {
      const std::string name = info[0].As<Napi::String>().Utf8Value();
      const uint32_t dim = info[1].As<Napi::Number>().Uint32Value();
      OptimizerSpec opt = opt_from(info[2].As<Napi::Number>().Uint32Value(), info[3]);
      InitSpec init{};
      const uint32_t it = info[4].As<Napi::Number>().Uint32Value();
      if (it > 3) bad("unknown initializer");
      init.type = static_cast<InitType>(it);
      auto p = info[5].As<Napi::Float64Array>();
      for (size_t i = 0; i < p.ElementLength() && i < 4; i++) init.p[i] = p[i];
      init.seed = static_cast<uint64_t>(info[6].As<Napi::Number>().Int64Value());
      engine_->create_table(name, dim, opt, init);
      return info.Env().Undefined();
    });
  }

  Napi::Value UpdateTable(const Napi::CallbackInfo& info) {
    return Guard(info, [&]() -> Napi::Value {
      const std::string name = info[0].As<Napi::String>().Utf8Value();
      uint32_t type = 0;
      bool found = false;
      for (auto& t : engine_->list_tables())
        if (t.name == name) {
          type = static_cast<uint32_t>(t.opt.type);
          found = true;
        }
      if (!found) throw Error(Code::NotFound, "no table \"" + name + "\"");
      engine_->update_table(name, opt_from(type, info[1]));
      return info.Env().Undefined();
    });
  }

  Napi::Value ListTables(const Napi::CallbackInfo& info) {
    return Guard(info, [&]() -> Napi::Value {
      Napi::Env env = info.Env();
      auto ts = engine_->list_tables();
      auto arr = Napi::Array::New(env, ts.size());
      for (size_t i = 0; i < ts.size(); i++) {
        auto o = Napi::Object::New(env);
        o.Set("name", ts[i].name);
        o.Set("dim", ts[i].dim);
        o.Set("opt", static_cast<uint32_t>(ts[i].opt.type));
        o.Set("hyper", f64(env, ts[i].opt.h, kMaxHyper));
        o.Set("init", static_cast<uint32_t>(ts[i].init.type));
        o.Set("initParams", f64(env, ts[i].init.p, 4));
        o.Set("seed", static_cast<double>(ts[i].init.seed));
        o.Set("rows", static_cast<double>(ts[i].rows));
        o.Set("rowFloats", ts[i].row_floats);
        arr.Set(static_cast<uint32_t>(i), o);
      }
      return arr;
    });
  }

  // On the thread pool: a drop waits for a running prepare's flush.
  Napi::Value DropTable(const Napi::CallbackInfo& info) {
    return Guard(info, [&]() -> Napi::Value {
      const std::string name = info[0].As<Napi::String>().Utf8Value();
      auto eng = engine_;
      (new Job(cb_arg(info, 1), [eng, name] { eng->drop_table(name); }, nullptr, {}))->Queue();
      return info.Env().Undefined();
    });
  }

  Napi::Value Pull(const Napi::CallbackInfo& info) {
    return Guard(info, [&]() -> Napi::Value {
      const std::string name = info[0].As<Napi::String>().Utf8Value();
      auto keys = buffer_arg(info, 1, "keys");
      auto cb = cb_arg(info, 2);
      // Bytes left free before the rows for the caller's message header, so
      // that the server frames a reply around the rows instead of copying
      // them (a 16 MiB copy into fresh pages costs ~10 ms of the event loop).
      // A multiple of 8 keeps the rows aligned.
      const uint32_t headroom = info.Length() > 3 && info[3].IsNumber() ? info[3].As<Napi::Number>().Uint32Value() : 0;
      if (headroom > 64 || headroom % 8) bad("pull headroom must be a multiple of 8 up to 64, got " + std::to_string(headroom));
      if (keys.Length() % 8) bad("keys must be packed uint64: length " + std::to_string(keys.Length()) + " is not a multiple of 8");
      const size_t n = keys.Length() / 8;
      const uint32_t dim = engine_->dim_of(name);
      const size_t bytes = headroom + n * dim * sizeof(float);
      // The caller's bound on the reply, checked with the table's dim now:
      // the service sizes a request before it reaches here, with a dim that
      // a drop and create, a restore or a commit may have changed since. A
      // Buffer is at most 4 GiB: 2 GiB is the bound when none is given.
      const double max_bytes = info.Length() > 4 && info[4].IsNumber() && info[4].As<Napi::Number>().DoubleValue() > 0
                                   ? std::min(info[4].As<Napi::Number>().DoubleValue(), 2147483648.0)
                                   : 2147483648.0;
      if (static_cast<double>(n) * dim * sizeof(float) > max_bytes) {
        char m[200];
        const double rows = static_cast<double>(n) * dim * sizeof(float);
        std::snprintf(m, sizeof m, " keys x dim %u is %.0f bytes of rows (%.1f MiB), above the %.0f (%.1f MiB) this reply may hold; split the batch",
                      dim, rows, rows / 1048576.0, max_bytes, max_bytes / 1048576.0);
        throw Error(Code::TooLarge, std::to_string(n) + m);
      }
      // Allocated on the pool thread, not here (RowBuffers).
      auto buf = std::make_shared<RowBuffers::Buf>(RowBuffers::Buf{nullptr, 0});
      auto eng = engine_;
      const uint8_t* kp = keys.Data();
      auto job = new Job(
          cb,
          [eng, name, kp, n, dim, headroom, bytes, buf] {
            *buf = RowBuffers::alloc(bytes);
            eng->pull(name, kp, n, reinterpret_cast<float*>(buf->p + headroom), dim);
          },
          [buf, bytes](Napi::Env env) -> Napi::Value {
            const RowBuffers::Buf b = *buf;
            *buf = {nullptr, 0};  // JS owns it now
            return Napi::Buffer<uint8_t>::New(env, b.p, bytes, [b](Napi::Env, uint8_t*) { RowBuffers::release(b); });
          },
          {keys},
          // On failure the rows were never handed to JS: release them here.
          [buf] { RowBuffers::release(*buf); });
      job->Queue();
      return info.Env().Undefined();
    });
  }

  Napi::Value Push(const Napi::CallbackInfo& info) {
    return Guard(info, [&]() -> Napi::Value {
      const std::string name = info[0].As<Napi::String>().Utf8Value();
      auto keys = buffer_arg(info, 1, "keys");
      auto grads = buffer_arg(info, 2, "grads");
      auto cb = cb_arg(info, 3);
      if (keys.Length() % 8) bad("keys must be packed uint64: length " + std::to_string(keys.Length()) + " is not a multiple of 8");
      if (grads.Length() % 4) bad("grads must be packed float32: length " + std::to_string(grads.Length()) + " is not a multiple of 4");
      const size_t n = keys.Length() / 8;
      const uint32_t dim = engine_->dim_of(name);
      if (grads.Length() / 4 != n * dim)
        bad("grads hold " + std::to_string(grads.Length() / 4) + " values; " + std::to_string(n) + " keys x dim " + std::to_string(dim) + " = " +
            std::to_string(n * dim) + " expected");
      auto eng = engine_;
      const uint8_t* kp = keys.Data();
      const uint8_t* gp = grads.Data();
      (new Job(cb, [eng, name, kp, gp, n, dim] { eng->push(name, kp, n, gp, dim); }, nullptr, {keys, grads}))->Queue();
      return info.Env().Undefined();
    });
  }

  Napi::Value Prepare(const Napi::CallbackInfo& info) {
    return Guard(info, [&]() -> Napi::Value {
      const uint64_t id = static_cast<uint64_t>(info[0].As<Napi::Number>().Int64Value());
      auto dense = buffer_arg(info, 1, "dense");
      auto meta = buffer_arg(info, 2, "meta");
      const uint64_t ballot = static_cast<uint64_t>(info[3].As<Napi::Number>().Int64Value());
      auto cb = cb_arg(info, 4);
      auto eng = engine_;
      std::string d(reinterpret_cast<const char*>(dense.Data()), dense.Length());
      std::string m(reinterpret_cast<const char*>(meta.Data()), meta.Length());
      // The boundary runs now, on this thread: pushes called after this
      // returns are outside the checkpoint. The flush runs on the pool.
      eng->prepare_begin(id, d, m, ballot);
      (new Job(cb, [eng, id] { eng->prepare_finish(id); }, nullptr, {}))->Queue();
      return info.Env().Undefined();
    });
  }

  Napi::Value Commit(const Napi::CallbackInfo& info) {
    return Guard(info, [&]() -> Napi::Value {
      const uint64_t id = static_cast<uint64_t>(info[0].As<Napi::Number>().Int64Value());
      auto eng = engine_;
      (new Job(cb_arg(info, 1), [eng, id] { eng->commit(id); }, nullptr, {}))->Queue();
      return info.Env().Undefined();
    });
  }

  Napi::Value Abort(const Napi::CallbackInfo& info) {
    return Guard(info, [&]() -> Napi::Value {
      const uint64_t id = static_cast<uint64_t>(info[0].As<Napi::Number>().Int64Value());
      auto eng = engine_;
      (new Job(cb_arg(info, 1), [eng, id] { eng->abort(id); }, nullptr, {}))->Queue();
      return info.Env().Undefined();
    });
  }

  Napi::Value Rollback(const Napi::CallbackInfo& info) {
    return Guard(info, [&]() -> Napi::Value {
      auto eng = engine_;
      (new Job(cb_arg(info, 0), [eng] { eng->rollback(); }, nullptr, {}))->Queue();
      return info.Env().Undefined();
    });
  }

  Napi::Value Committed(const Napi::CallbackInfo& info) {
    return Guard(info, [&]() -> Napi::Value {
      Napi::Env env = info.Env();
      uint64_t id;
      std::string d, m;
      if (!engine_->committed_checkpoint(&id, &d, &m)) return env.Null();
      auto o = Napi::Object::New(env);
      o.Set("id", static_cast<double>(id));
      o.Set("dense", Napi::Buffer<char>::Copy(env, d.data(), d.size()));
      o.Set("meta", Napi::Buffer<char>::Copy(env, m.data(), m.size()));
      return o;
    });
  }

  Napi::Value StatsJs(const Napi::CallbackInfo& info) {
    return Guard(info, [&]() -> Napi::Value {
      Napi::Env env = info.Env();
      Stats s = engine_->stats();
      auto o = Napi::Object::New(env);
      auto num = [&](const char* k, uint64_t v) { o.Set(k, static_cast<double>(v)); };
      num("cacheBytes", s.cache_bytes);
      num("cacheBudget", s.cache_budget);
      num("cacheRows", s.cache_rows);
      num("hits", s.hits);
      num("misses", s.misses);
      num("evictions", s.evictions);
      num("writebacks", s.writebacks);
      num("flushes", s.flushes);
      num("poolBytes", s.pool_bytes);
      num("poolUsedBytes", s.pool_used);
      o.Set("committed", s.committed ? Napi::Number::New(env, static_cast<double>(s.committed)) : env.Null());
      o.Set("prepared", s.prepared ? Napi::Number::New(env, static_cast<double>(s.prepared)) : env.Null());
      o.Set("lastId", static_cast<double>(s.last_id));
      num("epoch", s.epoch);
      num("maxPushWaitUs", s.max_push_wait_us);
      num("copiesInPool", s.copies_in_pool);
      num("copyRoomBytes", s.copy_room);
      num("rowsSaturated", s.rows_saturated);
      num("garbageTables", s.garbage_tables);
      num("logBytes", s.log_bytes);
      num("logSegmentsFreed", s.log_freed);
      num("logBytesCopied", s.log_copied);
      num("logBytesWarmed", s.log_warmed);
      auto prep = Napi::Object::New(env);
      const std::pair<const char*, uint64_t> phases[] = {{"flushUs", s.prep_flush_us},      {"slotsUs", s.prep_slots_us},
                                                         {"logSyncUs", s.prep_log_sync_us}, {"persistUs", s.prep_persist_us},
                                                         {"publishUs", s.prep_publish_us},  {"rows", s.prep_rows}};
      for (const auto& [k, v] : phases) prep.Set(k, static_cast<double>(v));
      o.Set("lastPrepare", prep);
      return o;
    });
  }

  // Ballots and identities are small synchronous transactions.
  Napi::Value RaiseBallot(const Napi::CallbackInfo& info) {
    return Guard(info, [&]() -> Napi::Value {
      const double b = info[0].As<Napi::Number>().DoubleValue();
      if (!(b >= 0) || b > 9007199254740991.0) bad("ballot must be a non-negative safe integer");
      return Napi::Number::New(info.Env(), static_cast<double>(engine_->raise_ballot(static_cast<uint64_t>(b))));
    });
  }

  static Napi::Object identity_obj(Napi::Env env, const Engine::Identity& id) {
    auto o = Napi::Object::New(env);
    char hex[33];
    snprintf(hex, sizeof hex, "%016llx%016llx", static_cast<unsigned long long>(id.cluster_hi), static_cast<unsigned long long>(id.cluster_lo));
    o.Set("clusterId", id.count ? Napi::Value(Napi::String::New(env, hex)) : env.Null());
    o.Set("shardIndex", static_cast<double>(id.index));
    o.Set("shardCount", static_cast<double>(id.count));
    o.Set("sealed", id.sealed);
    return o;
  }

  Napi::Value IdentityJs(const Napi::CallbackInfo& info) {
    return Guard(info, [&]() -> Napi::Value { return identity_obj(info.Env(), engine_->identity()); });
  }

  Napi::Value SetIdentity(const Napi::CallbackInfo& info) {
    return Guard(info, [&]() -> Napi::Value {
      const std::string hex = info[0].As<Napi::String>().Utf8Value();
      if (hex.size() != 32 || hex.find_first_not_of("0123456789abcdef") != std::string::npos) bad("cluster id must be 32 lowercase hex digits");
      Engine::Identity id;
      id.cluster_hi = std::stoull(hex.substr(0, 16), nullptr, 16);
      id.cluster_lo = std::stoull(hex.substr(16), nullptr, 16);
      id.index = static_cast<uint64_t>(info[1].As<Napi::Number>().Int64Value());
      id.count = static_cast<uint64_t>(info[2].As<Napi::Number>().Int64Value());
      id.sealed = info[3].ToBoolean().Value();
      return identity_obj(info.Env(), engine_->set_identity(id));
    });
  }

  Napi::Value Check(const Napi::CallbackInfo& info) {
    return Guard(info, [&]() -> Napi::Value {
      Napi::Env env = info.Env();
      auto r = engine_->check();
      auto o = Napi::Object::New(env);
      o.Set("tables", static_cast<double>(r.tables));
      o.Set("indexSlots", static_cast<double>(r.index_slots));
      o.Set("rowsLive", static_cast<double>(r.rows_live));
      o.Set("rowsWithoutVersion", static_cast<double>(r.rows_without_version));
      o.Set("staleSlots", static_cast<double>(r.stale_slots));
      o.Set("badEpochs", static_cast<double>(r.bad_epochs));
      o.Set("badRecords", static_cast<double>(r.bad_records));
      auto pr = Napi::Array::New(env, r.problems.size());
      for (size_t i = 0; i < r.problems.size(); i++) pr.Set(static_cast<uint32_t>(i), r.problems[i]);
      o.Set("problems", pr);
      return o;
    });
  }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    return Guard(info, [&]() -> Napi::Value {
      auto eng = engine_;
      auto rec = buffer_arg(info, 0, "close record");
      auto record = std::make_shared<std::string>(reinterpret_cast<const char*>(rec.Data()), rec.Length());
      (new Job(cb_arg(info, 1), [eng, record] { eng->close(*record); }, nullptr, {}))->Queue();
      return info.Env().Undefined();
    });
  }

  // Synchronous: one small transaction, and only when the reservation grows.
  Napi::Value ReserveCloseRecord(const Napi::CallbackInfo& info) {
    return Guard(info, [&]() -> Napi::Value {
      const double b = info[0].As<Napi::Number>().DoubleValue();
      if (!(b >= 0) || b > 9007199254740991.0) bad("close record size must be a non-negative safe integer");
      return Napi::Number::New(info.Env(), static_cast<double>(engine_->reserve_close_record(static_cast<uint64_t>(b))));
    });
  }

  // Shared with queued jobs, so a job outliving a GC'd wrapper stays valid.
  std::shared_ptr<Engine> engine_;
};

// Dense tensors live in the server as one row each; these apply the same
// optimizers and initial state as table rows, so both follow one formula.
// (rowFloats(opt, hyper, n), initRow(opt, hyper, row), applyUpdate(opt, hyper, row, step, grads) -> step)
Napi::Value RowFloats(const Napi::CallbackInfo& info) {
  try {
    OptimizerSpec opt = opt_from(info[0].As<Napi::Number>().Uint32Value(), info[1]);
    validate_optimizer(opt);
    const double n = info[2].As<Napi::Number>().DoubleValue();
    return Napi::Number::New(info.Env(), n * (1 + state_blocks(opt)));
  } catch (const Error& e) {
    to_js(info.Env(), e).ThrowAsJavaScriptException();
  }
  return info.Env().Undefined();
}

Napi::Value InitRow(const Napi::CallbackInfo& info) {
  try {
    OptimizerSpec opt = opt_from(info[0].As<Napi::Number>().Uint32Value(), info[1]);
    validate_optimizer(opt);
    auto row = info[2].As<Napi::Float32Array>();
    const uint32_t dim = static_cast<uint32_t>(row.ElementLength() / (1 + state_blocks(opt)));
    if (static_cast<size_t>(dim) * (1 + state_blocks(opt)) != row.ElementLength()) bad("row length does not match the optimizer");
    InitSpec zeros{};
    zeros.type = InitType::Zeros;
    init_row(zeros, opt, 0, dim, row.Data());
  } catch (const Error& e) {
    to_js(info.Env(), e).ThrowAsJavaScriptException();
  }
  return info.Env().Undefined();
}

Napi::Value ApplyUpdate(const Napi::CallbackInfo& info) {
  try {
    OptimizerSpec opt = opt_from(info[0].As<Napi::Number>().Uint32Value(), info[1]);
    validate_optimizer(opt);
    auto row = info[2].As<Napi::Float32Array>();
    uint32_t step = info[3].As<Napi::Number>().Uint32Value();
    auto g = info[4].As<Napi::Float32Array>();
    const size_t dim = g.ElementLength();
    if (dim * (1 + state_blocks(opt)) != row.ElementLength()) bad("gradient length does not match the tensor");
    for (size_t i = 0; i < dim; i++)
      if (!std::isfinite(g[i])) bad("gradient element " + std::to_string(i) + " is not finite; the push was refused");
    apply_update(opt, static_cast<uint32_t>(dim), row.Data(), &step, g.Data());
    return Napi::Number::New(info.Env(), step);
  } catch (const Error& e) {
    to_js(info.Env(), e).ThrowAsJavaScriptException();
  }
  return info.Env().Undefined();
}

// pmemobj_check over the pool file: libpmemobj's own consistency check.
Napi::Value CheckPoolFile(const Napi::CallbackInfo& info) {
  const std::string path = info[0].As<Napi::String>().Utf8Value();
  const int r = pmemobj_check(path.c_str(), kLayoutName);
  auto o = Napi::Object::New(info.Env());
  o.Set("consistent", r == 1);
  o.Set("message", r == -1 ? std::string(pmemobj_errormsg()) : std::string(r == 1 ? "consistent" : "not consistent"));
  return o;
}

Napi::Value RowBufferStats(const Napi::CallbackInfo& info) {
  const auto [kept, maps] = RowBuffers::stats();
  auto o = Napi::Object::New(info.Env());
  o.Set("keptBytes", static_cast<double>(kept));
  o.Set("maps", static_cast<double>(maps));
  return o;
}

Napi::Value ScratchBudgetStats(const Napi::CallbackInfo& info) {
  const ScratchStats st = ScratchBudget::get().stats();
  auto o = Napi::Object::New(info.Env());
  o.Set("usedBytes", static_cast<double>(st.used));
  o.Set("peakBytes", static_cast<double>(st.peak));
  o.Set("waits", static_cast<double>(st.waits));
  o.Set("budgetBytes", static_cast<double>(st.budget));
  return o;
}

Napi::Array names(Napi::Env env, const char* const* list, size_t n) {
  auto a = Napi::Array::New(env, n);
  for (size_t i = 0; i < n; i++) a.Set(static_cast<uint32_t>(i), list[i]);
  return a;
}

Napi::Object InitAll(Napi::Env env, Napi::Object exports) {
  // Batch buffers (1 MiB and more) are malloc'd on pool threads and freed on
  // the JS thread. With glibc's adaptive mmap threshold they would settle in
  // per-thread arenas and inflate the process well past the cache budget;
  // a fixed threshold keeps them as mmaps returned at free.
  mallopt(M_MMAP_THRESHOLD, 256 * 1024);
  exports.Set("NativeEngine", NativeEngine::Init(env));
  exports.Set("checkPoolFile", Napi::Function::New(env, CheckPoolFile));
  exports.Set("rowFloats", Napi::Function::New(env, RowFloats));
  exports.Set("initRow", Napi::Function::New(env, InitRow));
  exports.Set("applyUpdate", Napi::Function::New(env, ApplyUpdate));
  exports.Set("rowBufferStats", Napi::Function::New(env, RowBufferStats));
  exports.Set("scratchStats", Napi::Function::New(env, ScratchBudgetStats));
  // The engine's own lists, so the TypeScript side and the tests read them
  // instead of copies (common.h, failpoints.h).
  exports.Set("errorCodes", names(env, kCodeNames, kCodeCount));
  exports.Set("failpoints", names(env, kFailpoints, kFailpointCount));
  return exports;
}

}  // namespace

NODE_API_MODULE(pmemps_native, InitAll)
