// The Grafana dashboard (deploy/grafana/pmemps-dashboard.json) against the
// metrics a pserver really serves: every series its PromQL names must be in
// the registry of server/metrics.ts, scraped from a live /metrics endpoint
// (Metrics.listen in this process, no pool needed: names and types do not
// depend on the shard). A renamed metric fails here, not on a blank panel.
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { before, describe, test } from 'node:test';
import { Metrics } from '../server/metrics';

const DASHBOARD = path.join(__dirname, '..', '..', 'deploy', 'grafana', 'pmemps-dashboard.json');

// PromQL functions and aggregations the dashboard may call; anything else
// followed by "(" is a mistake Prometheus would reject.
const FUNCTIONS = new Set([
  'sum',
  'avg',
  'max',
  'min',
  'count',
  'topk',
  'bottomk',
  'quantile',
  'rate',
  'irate',
  'increase',
  'changes',
  'resets',
  'delta',
  'deriv',
  'histogram_quantile',
  'clamp_min',
  'clamp_max',
  'abs',
  'max_over_time',
  'min_over_time',
  'avg_over_time',
]);
const KEYWORDS = new Set(['by', 'without', 'on', 'ignoring', 'group_left', 'group_right', 'and', 'or', 'unless', 'bool', 'offset']);

/** Series names a scrape can hold, from the registry's `# TYPE` lines: a histogram is its _bucket, _sum and _count. */
function seriesOf(exposition: string): { series: Set<string>; histograms: Set<string>; counters: Set<string> } {
  const series = new Set<string>();
  const histograms = new Set<string>();
  const counters = new Set<string>();
  for (const line of exposition.split('\n')) {
    const m = /^# TYPE (\S+) (\S+)$/.exec(line);
    if (!m) continue;
    const [, name, type] = m;
    if (type === 'histogram' || type === 'summary') {
      if (type === 'histogram') histograms.add(name);
      for (const s of ['_bucket', '_sum', '_count']) {
        series.add(name + s);
        counters.add(name + s);
      }
      if (type === 'summary') series.add(name);
    } else {
      series.add(name);
      if (type === 'counter') counters.add(name);
    }
  }
  return { series, histograms, counters };
}

interface Query {
  where: string;
  expr: string;
}

/** Every PromQL expression of the dashboard: panel targets and template variable queries. */
function queriesOf(dash: any): Query[] {
  const out: Query[] = [];
  const walk = (panels: any[]): void => {
    for (const p of panels ?? []) {
      for (const t of p.targets ?? []) out.push({ where: `panel "${p.title}" ${t.refId}`, expr: t.expr });
      walk(p.panels);
    }
  };
  walk(dash.panels);
  // Grafana's label_values(selector, label): the selector is PromQL, the label a name.
  for (const v of dash.templating?.list ?? []) {
    if (v.type !== 'query') continue;
    const q: string = typeof v.query === 'string' ? v.query : v.query.query;
    const m = /^label_values\((.*),\s*\w+\)$/.exec(q);
    out.push({ where: `variable $${v.name}`, expr: m ? m[1] : q });
  }
  return out;
}

/** Removes what holds no metric name: strings, Grafana variables, label matchers, ranges and grouping clauses. */
function skeleton(expr: string): string {
  return expr
    .replace(/"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'/g, '""')
    .replace(/\$\{?\w+\}?/g, ' ')
    .replace(/\{[^}]*\}/g, ' ')
    .replace(/\[[^\]]*\]/g, ' ')
    .replace(/\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)/g, ' ');
}

/** The argument text of every call of fn in expr (up to its matching parenthesis). */
function callArgs(expr: string, fn: string): string[] {
  const out: string[] = [];
  for (let at = expr.indexOf(`${fn}(`); at >= 0; at = expr.indexOf(`${fn}(`, at + 1)) {
    const start = at + fn.length + 1;
    let depth = 1;
    let i = start;
    for (; i < expr.length && depth > 0; i++) depth += expr[i] === '(' ? 1 : expr[i] === ')' ? -1 : 0;
    out.push(expr.slice(start, i - 1));
  }
  return out;
}

/** The problems of one expression against the served series; empty when it is sound. */
function problemsOf(q: Query, served: ReturnType<typeof seriesOf>): string[] {
  const problems: string[] = [];
  const sk = skeleton(q.expr);
  const token = /(\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)|([A-Za-z_:][A-Za-z0-9_:]*)/g;
  const metrics: string[] = [];
  for (let m; (m = token.exec(sk));) {
    const id = m[2];
    if (!id) continue;
    const next = sk.slice(token.lastIndex).trimStart()[0];
    if (next === '(') {
      if (!FUNCTIONS.has(id)) problems.push(`${q.where}: unknown function ${id}()`);
    } else if (!KEYWORDS.has(id)) {
      metrics.push(id);
      if (!served.series.has(id)) problems.push(`${q.where}: ${id} is not a series server/metrics.ts serves`);
    }
  }
  if (metrics.length === 0) problems.push(`${q.where}: names no metric`);
  // histogram_quantile needs the bucket series of a histogram, aggregated
  // keeping `le`; rate() and increase() only make sense on counters.
  for (const arg of callArgs(q.expr, 'histogram_quantile')) {
    const inner = skeleton(arg);
    const buckets = [...inner.matchAll(/\b([A-Za-z_:][A-Za-z0-9_:]*)_bucket\b/g)].map((b) => b[1]);
    if (buckets.length === 0) problems.push(`${q.where}: histogram_quantile over no _bucket series`);
    for (const b of buckets) if (!served.histograms.has(b)) problems.push(`${q.where}: ${b} is not a histogram`);
    if (!/\bby\s*\([^)]*\ble\b[^)]*\)/.test(arg)) problems.push(`${q.where}: histogram_quantile must aggregate "by (le, ...)"`);
  }
  for (const m of q.expr.matchAll(/\b(?:rate|irate|increase)\(\s*([A-Za-z_:][A-Za-z0-9_:]*)/g))
    if (served.series.has(m[1]) && !served.counters.has(m[1])) problems.push(`${q.where}: rate() of ${m[1]}, which is not a counter`);
  return problems;
}

function problemsOfDashboard(dash: any, served: ReturnType<typeof seriesOf>): string[] {
  return queriesOf(dash).flatMap((q) => problemsOf(q, served));
}

describe('Grafana dashboard', () => {
  let served: ReturnType<typeof seriesOf>;
  let dash: any;

  before(async () => {
    const m = await Metrics.listen('127.0.0.1:0', 'dashboard-test');
    try {
      const res = await fetch(`http://127.0.0.1:${m.port}/metrics`);
      assert.equal(res.status, 200);
      served = seriesOf(await res.text());
    } finally {
      await m.close();
    }
    dash = JSON.parse(fs.readFileSync(DASHBOARD, 'utf8'));
  });

  test('the scrape lists the metrics of server/metrics.ts', () => {
    // Guards the parser above: an empty set would make every check vacuous.
    for (const s of ['pmemps_rows_pulled_total', 'pmemps_rpc_duration_seconds_bucket', 'pmemps_cache_hit_ratio', 'pmemps_process_cpu_seconds_total'])
      assert.ok(served.series.has(s), `${s} not in the scrape`);
    assert.ok(served.histograms.has('pmemps_rpc_duration_seconds'));
    assert.ok(!served.series.has('pmemps_rpc_duration_seconds'), 'a histogram has no bare series');
  });

  test('every series, function and histogram quantile of the dashboard is sound', () => {
    const qs = queriesOf(dash);
    assert.ok(qs.length >= 20, `only ${qs.length} queries found`);
    assert.deepEqual(problemsOfDashboard(dash, served), []);
  });

  test('the panels cover the metrics an operator watches', () => {
    const all = queriesOf(dash)
      .map((q) => q.expr)
      .join('\n');
    for (const name of [
      'pmemps_rows_pulled_total',
      'pmemps_rows_pushed_total',
      'pmemps_rpc_duration_seconds_bucket',
      'pmemps_rpc_duration_seconds_count',
      'pmemps_cache_hit_ratio',
      'pmemps_cache_hits_total',
      'pmemps_cache_misses_total',
      'pmemps_cache_bytes',
      'pmemps_cache_budget_bytes',
      'pmemps_cache_evictions_total',
      'pmemps_cache_writebacks_total',
      'pmemps_pool_bytes',
      'pmemps_pool_used_bytes',
      'pmemps_checkpoint_phase_seconds_bucket',
      'pmemps_checkpoint_committed_id',
      'pmemps_checkpoint_push_wait_max_seconds',
      'pmemps_checkpoint_last_prepare_seconds',
      'pmemps_log_bytes',
      'pmemps_log_copied_bytes_total',
      'pmemps_duplicate_pushes_total',
      'pmemps_needs_restore',
      'pmemps_process_cpu_seconds_total',
      'pmemps_process_resident_memory_bytes',
    ])
      assert.match(all, new RegExp(`\\b${name}\\b`), `no panel uses ${name}`);
    const ids = new Set<number>();
    const walk = (ps: any[]): void => {
      for (const p of ps ?? []) {
        assert.ok(!ids.has(p.id), `panel id ${p.id} twice`);
        ids.add(p.id);
        walk(p.panels);
      }
    };
    walk(dash.panels);
  });

  test('the check catches a misspelled metric, a bare histogram and a rate of a gauge', () => {
    const bad = (from: string, to: string): string[] => {
      const text = fs.readFileSync(DASHBOARD, 'utf8');
      assert.ok(text.includes(from), `the dashboard no longer contains ${from}`);
      return problemsOfDashboard(JSON.parse(text.replace(from, to)), served);
    };
    assert.deepEqual(bad('pmemps_cache_hit_ratio{', 'pmemps_cache_hit_ration{'), [
      'panel "Cache hit ratio" B: pmemps_cache_hit_ration is not a series server/metrics.ts serves',
    ]);
    const bare = bad('rate(pmemps_rpc_duration_seconds_bucket{', 'rate(pmemps_rpc_duration_seconds{');
    assert.ok(
      bare.some((p) => p.includes('pmemps_rpc_duration_seconds is not a series')),
      bare.join('\n'),
    );
    assert.ok(
      bare.some((p) => p.includes('histogram_quantile over no _bucket series')),
      bare.join('\n'),
    );
    const gauge = bad('pmemps_duplicate_pushes_total{', 'pmemps_pool_used_bytes{');
    assert.ok(
      gauge.some((p) => p.includes('rate() of pmemps_pool_used_bytes, which is not a counter')),
      gauge.join('\n'),
    );
    const noLe = bad('sum by (le, method)', 'sum by (method)');
    assert.ok(
      noLe.some((p) => p.includes('must aggregate "by (le, ...)"')),
      noLe.join('\n'),
    );
  });
});
