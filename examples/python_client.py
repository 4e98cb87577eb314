#!/usr/bin/env python3
"""Drive pmemps from Python with grpcio and proto/pmemps.proto alone (no SDK).

  python3 -m grpc_tools.protoc -I proto --python_out=gen --grpc_python_out=gen proto/pmemps.proto
  python3 examples/python_client.py --stubs gen [--check] [--json] HOST:PORT [HOST:PORT ...]
  ... [--ca ca.pem [--cert client.pem --key client.key]] [--token-file FILE]
  python3 examples/python_client.py --statefulset pmemps --namespace ml --replicas 2 [--port 7000] ...

The endpoints are the shards in shard order; --statefulset builds them from a
Kubernetes StatefulSet (deploy/k8s), --print-endpoints prints them and exits.
Without --stubs the stubs are generated into a temp dir (needs grpc_tools).
--check asserts exact values, --json prints a summary line. Exits 1 on any failure. docs/python-client.md.
"""
import argparse, array, atexit, json, math, os, random, re, shutil, subprocess, sys, tempfile, time, uuid

LABEL = re.compile(r'^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$')
DOMAIN = re.compile(r'^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')

def statefulset_endpoints(name, service, namespace, replicas, port, cluster_domain='cluster.local'):
    """Pod N of a StatefulSet is shard N: name-N.service.namespace.svc.domain:port in shard order
    (the same list as statefulSetEndpoints in worker/k8s.ts). Raises ValueError on a name
    Kubernetes would not give a DNS record."""
    if not isinstance(replicas, int) or replicas < 1: raise ValueError(f'replicas must be a whole number of at least 1, got {replicas}')
    if not isinstance(port, int) or not 1 <= port <= 65535: raise ValueError(f'port must be 1..65535, got {port}')
    for what, v in (('service', service), ('namespace', namespace)):
        if not LABEL.match(v): raise ValueError(f'{what} "{v}" is not a DNS label')
    if not LABEL.match(f'{name}-{replicas - 1}'): raise ValueError(f'pod name "{name}-{replicas - 1}" is not a DNS label')
    if not DOMAIN.match(cluster_domain): raise ValueError(f'cluster domain "{cluster_domain}" is not a DNS name')
    return [f'{name}-{i}.{service}.{namespace}.svc.{cluster_domain}:{port}' for i in range(replicas)]

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument('endpoints', nargs='*')
ap.add_argument('--statefulset', metavar='NAME', help='endpoints from this StatefulSet instead: NAME-0.SERVICE.NAMESPACE.svc...:PORT, ...')
ap.add_argument('--service', help='its headless Service (default: NAME)')
ap.add_argument('--namespace', default='default')
ap.add_argument('--replicas', type=int, help='its replicas: the number of shards')
ap.add_argument('--port', type=int, default=7000)
ap.add_argument('--cluster-domain', default='cluster.local')
ap.add_argument('--print-endpoints', action='store_true', help='print the endpoints, one a line, and exit')
ap.add_argument('--stubs', default=os.environ.get('PMEMPS_PY_STUBS'), help='dir with pmemps_pb2*.py')
ap.add_argument('--check', action='store_true')
ap.add_argument('--json', action='store_true')
ap.add_argument('--ca', help='PEM of the CA that signed the servers\' certificates: TLS (servers with --tls-cert)')
ap.add_argument('--cert', help='client certificate, PEM (mutual TLS: servers with --tls-client-ca)')
ap.add_argument('--key', help='private key of --cert, PEM')
ap.add_argument('--token-file', help='file holding the bearer token (servers with --auth-tokens); or PMEMPS_TOKEN')
args = ap.parse_args()
if args.statefulset:
    if args.endpoints: ap.error('give endpoints or --statefulset, not both')
    if args.replicas is None: ap.error('--statefulset needs --replicas')
    try:
        args.endpoints = statefulset_endpoints(args.statefulset, args.service or args.statefulset, args.namespace, args.replicas, args.port, args.cluster_domain)
    except ValueError as e:
        ap.error(str(e))
if not args.endpoints: ap.error('no endpoints: list them (HOST:PORT, in shard order) or give --statefulset')
if args.print_endpoints:
    print('\n'.join(args.endpoints))
    sys.exit(0)
if bool(args.cert) != bool(args.key): ap.error('--cert and --key go together')
if args.cert and not args.ca: ap.error('--cert needs --ca (mutual TLS is TLS first)')
try:
    import grpc
except ImportError:
    sys.exit('needs grpcio: apt-get install python3-grpcio python3-grpc-tools (or pip install grpcio grpcio-tools)')
if not args.stubs:
    args.stubs = tempfile.mkdtemp(prefix='pmemps-stubs-')
    atexit.register(shutil.rmtree, args.stubs, True)
    proto = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'proto')
    if subprocess.run([sys.executable, '-m', 'grpc_tools.protoc', '-I', proto, '--python_out=' + args.stubs,
                       '--grpc_python_out=' + args.stubs, os.path.join(proto, 'pmemps.proto')]).returncode:
        sys.exit('could not generate the stubs (needs grpc_tools); generate them and pass --stubs DIR')
sys.path.insert(0, args.stubs)
import pmemps_pb2 as pb, pmemps_pb2_grpc as pb_grpc  # noqa: E402

M64 = (1 << 64) - 1

def splitmix64(z):
    # The shard of key k is splitmix64(k) mod N (worker/shard.ts): the
    # SplitMix64 finalizer applied to the key itself (no golden-gamma add).
    z = ((z ^ (z >> 30)) * 0xbf58476d1ce4e5b9) & M64
    z = ((z ^ (z >> 27)) * 0x94d049bb133111eb) & M64
    return z ^ (z >> 31)

def le(a):  # the wire is little-endian; array uses the machine's order
    if sys.byteorder == 'big': a.byteswap()
    return a

def pack_keys(keys): return le(array.array('Q', keys)).tobytes()          # uint64 LE
def pack_f32(vals): return le(array.array('f', vals)).tobytes()           # float32 LE
def unpack_f32(b): return list(le(array.array('f', b)))
def f32(x): return array.array('f', [x])[0]                               # round to float32

def check(ok, what):
    if args.check and not ok: raise AssertionError(what)

def by_shard(keys, n):  # indices of the keys each shard owns
    groups = [[] for _ in range(n)]
    for i, k in enumerate(keys): groups[splitmix64(k) % n].append(i)
    return groups

def pull(table, keys, dim):
    rows = [None] * len(keys)
    for s, idx in enumerate(by_shard(keys, len(stubs))):
        if not idx: continue
        vals = unpack_f32(stubs[s].Pull(pb.PullRequest(table=table, keys=pack_keys([keys[i] for i in idx])), timeout=10).values)
        for j, i in enumerate(idx): rows[i] = vals[j * dim:(j + 1) * dim]
    return rows

def push(table, keys, grads, seq, incarnation=None):  # grads: one row per key; returns duplicate flags
    dup = []
    for s, idx in enumerate(by_shard(keys, len(stubs))):
        if not idx: continue
        req = pb.PushRequest(table=table, keys=pack_keys([keys[i] for i in idx]), grads=pack_f32([g for i in idx for g in grads[i]]),
                             worker_id=worker_id, seq=seq, incarnation=status[s].incarnation if incarnation is None else incarnation)
        dup.append(stubs[s].Push(req, timeout=10).duplicate)
    return dup

class Bearer(grpc.UnaryUnaryClientInterceptor):
    # Metadata rather than grpc.access_token_call_credentials: call
    # credentials need TLS, and a token over plaintext loopback is allowed.
    def __init__(self, token): self.md = ('authorization', 'Bearer ' + token)
    def intercept_unary_unary(self, cont, details, request):
        return cont(details._replace(metadata=list(details.metadata or ()) + [self.md]), request)

def channel(endpoint, opts):
    read = lambda f: open(f, 'rb').read() if f else None
    if args.ca:
        ch = grpc.secure_channel(endpoint, grpc.ssl_channel_credentials(read(args.ca), read(args.key), read(args.cert)), options=opts)
    else:
        ch = grpc.insecure_channel(endpoint, options=opts)
    token = open(args.token_file).read().strip() if args.token_file else os.environ.get('PMEMPS_TOKEN')
    return grpc.intercept_channel(ch, Bearer(token)) if token else ch

def main():
    global stubs, status, worker_id
    # grpcio receives at most 4 MiB by default; the server takes up to 64 MiB (--max-message-mb).
    opts = [('grpc.max_receive_message_length', 64 << 20), ('grpc.max_send_message_length', 64 << 20)]
    stubs = [pb_grpc.ParameterServerStub(channel(e, opts)) for e in args.endpoints]
    status = [s.Status(pb.StatusRequest(), timeout=10) for s in stubs]
    for e, st in zip(args.endpoints, status):
        ident = f'shard {st.identity.shard_index}/{st.identity.shard_count}' if st.HasField('identity') else 'no identity yet'
        print(f'{e}: version {st.version}, {ident}, incarnation {st.incarnation}, lineage {st.lineage}, '
              f'committed {st.committed_id}, ballot {st.ballot}, tables {[t.spec.name for t in st.tables]}')
    worker_id, dim, n = 'py-' + uuid.uuid4().hex[:12], 4, len(stubs)
    # Shard identity, as the SDK does it at connect (docs/protocol.md, Identity): a shard that
    # has one must be at its index in the list (else keys would reach the wrong rows). A new
    # cluster is identified in two phases: the id, shard 0 first (the first id stored there is
    # the cluster's, so workers starting together agree), then a seal on every shard. Shards
    # without an identity next to unsealed ones are a cluster still being formed: complete it;
    # next to a sealed one, a replaced pool: refuse it. A refused SetIdentity means another
    # worker got there first: read the shards again.
    for _ in range(2 * n + 3):
        named = [st.identity for st in status if st.HasField('identity')]
        for i, st in enumerate(status):
            if st.HasField('identity') and (st.identity.shard_index, st.identity.shard_count) != (i, n):
                sys.exit(f'{args.endpoints[i]} is shard {st.identity.shard_index} of {st.identity.shard_count}, not {i} of {n}: list the shards in order')
        if len({x.cluster_id for x in named}) > 1:
            sys.exit('the servers are not one cluster (different cluster ids)')
        fresh = [i for i, st in enumerate(status) if not st.HasField('identity')]
        if fresh and any(x.sealed for x in named):
            # Asked again after a seal was seen, an empty pool is a replaced one (the first
            # answers were not one snapshot).
            if any(not stubs[i].Status(pb.StatusRequest(), timeout=10).HasField('identity') for i in fresh):
                sys.exit(f'{", ".join(args.endpoints[i] for i in fresh)}: new, empty pool in a complete cluster; check --pmem')
        else:
            try:
                cid = named[0].cluster_id if named else uuid.uuid4().hex
                def ident(i, sealed):
                    return pb.SetIdentityRequest(identity=pb.ShardIdentity(cluster_id=cid, shard_index=i, shard_count=n, sealed=sealed))
                for i in sorted(fresh):  # shard 0 first
                    stubs[i].SetIdentity(ident(i, False), timeout=10)
                for i, st in enumerate(status):
                    if not (st.HasField('identity') and st.identity.sealed):
                        stubs[i].SetIdentity(ident(i, True), timeout=10)
                break
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.FAILED_PRECONDITION: raise
        status = [s.Status(pb.StatusRequest(), timeout=10) for s in stubs]
    else:
        sys.exit('the shard identities kept changing while this client identified them; are pools being replaced?')
    # Seqs start from the clock in microseconds, as the SDK's do: a shard that
    # forgot an idle worker refuses seqs below its watermark (reason too_old).
    seq0 = time.time_ns() // 1000
    keys = [random.getrandbits(64) for _ in range(6)]  # fresh rows on every run
    print('keys -> shard:', ', '.join(f'{k}->{splitmix64(k) % n}' for k in keys))

    # An Adagrad table with a normal initializer, created on every shard (idempotent).
    spec = pb.TableSpec(name='py_emb', dim=dim, seed=7, optimizer=pb.Optimizer(type='adagrad', params={'lr': 0.05}),
                        initializer=pb.Initializer(type='normal', mean=0, std=0.01))
    print('CreateTable py_emb: created =', [s.CreateTable(pb.CreateTableRequest(spec=spec), timeout=10).created for s in stubs])
    before = pull('py_emb', keys, dim)
    grads = [[0.5 * (i + 1), -0.25, 1.0, 0.125 * i] for i in range(len(keys))]
    print('Push seq 1: duplicate =', push('py_emb', keys, grads, seq=seq0 + 1))
    retry = push('py_emb', keys, grads, seq=seq0 + 1)  # a retry: same worker_id and seq
    print('Push seq 1 again: duplicate =', retry)
    check(all(retry), 'a retried push must be reported duplicate')
    after = pull('py_emb', keys, dim)
    for k, b, a in zip(keys, before, after): print(f'  {k:>20}: {" ".join(f"{v:+.5f}" for v in b)} -> {" ".join(f"{v:+.5f}" for v in a)}')
    lr, eps = f32(0.05), f32(1e-10)  # Adagrad in float32, accumulator from 0: docs/optimizers.md
    for b, a, g in zip(before, after, grads):
        check(a == [f32(w + f32(-lr * f32(x / f32(math.sqrt(f32(x * x)) + eps)))) for w, x in zip(b, g)], f'adagrad row {a}')

    if args.check:  # SGD from a constant row: exactly 0.5 - lr*g in float32, applied once
        sgd = pb.TableSpec(name='py_sgd', dim=2, optimizer=pb.Optimizer(type='sgd', params={'lr': 0.1}),
                           initializer=pb.Initializer(type='constant', value=0.5))
        for s in stubs: s.CreateTable(pb.CreateTableRequest(spec=sgd), timeout=10)
        check(pull('py_sgd', keys, 2) == [[0.5, 0.5]] * len(keys), 'constant initializer')
        g = [[1.0, -3.0]] * len(keys)
        push('py_sgd', keys, g, seq=seq0 + 2); push('py_sgd', keys, g, seq=seq0 + 2)
        check(pull('py_sgd', keys, 2) == [[f32(0.5 + f32(-f32(0.1) * x)) for x in r] for r in g], 'sgd row')
        try:  # a push naming another incarnation is refused, reason in the trailer
            push('py_sgd', keys, g, seq=seq0 + 3, incarnation=1); check(False, 'wrong incarnation accepted')
        except grpc.RpcError as e:
            check(e.code() == grpc.StatusCode.FAILED_PRECONDITION and ('pmemps-reason', 'incarnation') in e.trailing_metadata(), str(e))

    # Two-phase checkpoint over every shard (one shard: just that one). id above every
    # shard's last; ballot from Status; meta as the SDK writes it, so PsClient.restore() reads it.
    ckpt = max(max(st.committed_id, st.last_checkpoint_id) for st in status) + 1
    ballot = max(st.ballot for st in status)
    meta = json.dumps({'step': 1, 'meta': {'client': 'python'}, 'buffer': False}).encode()
    try:
        for s, st in zip(stubs, status):
            s.Checkpoint(pb.CheckpointRequest(id=ckpt, phase=pb.PREPARE, ballot=ballot, meta=meta, incarnation=st.incarnation), timeout=30)
    except grpc.RpcError:
        for s in stubs:
            try: s.Checkpoint(pb.CheckpointRequest(id=ckpt, phase=pb.ABORT, ballot=ballot), timeout=30)
            except grpc.RpcError: pass
        raise
    done = [s.Checkpoint(pb.CheckpointRequest(id=ckpt, phase=pb.COMMIT, ballot=ballot), timeout=30) for s in stubs]
    print(f'Checkpoint {ckpt} (ballot {ballot}): committed_id =', [r.committed_id for r in done])
    check(all(r.committed_id == ckpt for r in done), 'checkpoint committed everywhere')
    if args.check: print('check: ok')
    if args.json: print(json.dumps({'table': 'py_emb', 'dim': dim, 'keys': [str(k) for k in keys], 'rows': after, 'checkpoint': ckpt,
                                    'shards': [splitmix64(k) % n for k in keys], 'worker_id': worker_id}))

if __name__ == '__main__':
    try:
        main()
    except grpc.RpcError as e:
        reason = dict(e.trailing_metadata() or ()).get('pmemps-reason', '-')
        sys.exit(f'failed: {e.code().name} (reason {reason}): {e.details()}')
    except AssertionError as e:
        sys.exit(f'check failed: {e}')
