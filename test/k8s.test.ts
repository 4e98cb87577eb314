// The Kubernetes manifests (deploy/k8s) without a cluster: every overlay is
// rendered with `kubectl kustomize`, and what the pieces assume of each other
// is checked: the options against server/config.ts and `pserver --help`, the
// ports of the options, container, Service, probes and scrape annotation, the
// probes against the image's HEALTHCHECK and entrypoint, the secret files
// against what the entrypoint maps (by running it), the memory against the
// sizing rule, the grace period against the drain. A second test breaks each
// of these on purpose and expects the checker to say so.
//
// Needs kubectl (./run.sh setup installs Debian's kubernetes-client when it is
// missing); fails, never skips, without it. PMEMPS_KUBECTL picks another
// binary, e.g. Debian's 1.20 with its kustomize v2.0.3, which the manifests
// are written for as well.
import { after, describe, test } from 'node:test';
import * as assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import YAML from 'yaml';
import { OPTIONS, envName, loadConfig, splitHostPort, type PserverConfig } from '../server/config';
import { statefulSetEndpoints } from '../worker';
import { removeDir, tempDir } from './helpers';

const ROOT = path.join(__dirname, '..', '..'); // dist/test -> repository root
const K8S = path.join(ROOT, 'deploy', 'k8s');
const RENDERINGS = ['base', 'overlays/hostpath-dax', 'overlays/memory'];
const KUBECTL = process.env.PMEMPS_KUBECTL ?? 'kubectl';
const PYTHON = process.env.PMEMPS_PYTHON ?? '/usr/bin/python3';

// The sizing rule of deploy/k8s/README.md: cache + reply budget + receive
// budget + working memory of large calls + this much for Node, its heap,
// gRPC, one exec probe and what a flood of refused requests leaves for V8
// to free (docs/operations.md, Memory requests).
const OVERHEAD_MIB = 768;
// A large call's working memory against its message (docs/operations.md).
const SCRATCH_PER_MESSAGE = 5;
// The clean close after the drain: metrics server, pool close.
const CLOSE_SECONDS = 15;
// A filesystem gives a non-root user less than the volume's size (ext4 keeps 5% for root).
const VOLUME_OVER_POOL = 1.1;

const temps: string[] = [];
after(() => temps.forEach(removeDir));

type Obj = Record<string, any>;

function kustomize(dir: string): Obj[] {
  const r = spawnSync(KUBECTL, ['kustomize', path.join(K8S, dir)], { encoding: 'utf8', timeout: 20_000 });
  if (r.error) assert.fail(`cannot run ${KUBECTL} (${r.error.message}): run ./run.sh setup, which installs Debian's kubernetes-client, or set PMEMPS_KUBECTL`);
  // Kustomize v5 warns on stderr about the fields kept for v2: not an error.
  assert.equal(r.status, 0, `${KUBECTL} kustomize ${dir} failed:\n${r.stderr}`);
  return YAML.parseAllDocuments(r.stdout).map((d) => {
    assert.equal(d.errors.length, 0, `${dir}: ${d.errors.join('; ')}`);
    return d.toJS() as Obj;
  });
}

/** The image's contract, from the files that build it. */
interface Image {
  entrypoint: string;
  healthCmd: string[];
  uid: number;
  gid: number;
  secretsDir: string;
}

function readImage(): Image {
  const df = fs.readFileSync(path.join(ROOT, 'deploy', 'Dockerfile'), 'utf8');
  const ep = fs.readFileSync(path.join(ROOT, 'deploy', 'entrypoint.sh'), 'utf8');
  const m = (re: RegExp, s: string, what: string): RegExpExecArray => re.exec(s) ?? assert.fail(`cannot find ${what}`);
  const copied = m(/^COPY deploy\/entrypoint\.sh (\S+)$/m, df, 'where the Dockerfile copies the entrypoint')[1];
  const entry = JSON.parse(m(/^ENTRYPOINT (\[.*\])$/m, df, 'the Dockerfile ENTRYPOINT')[1]) as string[];
  assert.equal(entry.length, 1);
  // On PATH (/usr/local/bin), so the probes may name it without its directory.
  assert.equal(path.posix.join('/usr/local/bin', entry[0]), copied, 'ENTRYPOINT is the copied entrypoint');
  return {
    entrypoint: entry[0],
    healthCmd: JSON.parse(m(/^\s*CMD (\[.*\])$/m, df.slice(df.indexOf('HEALTHCHECK')), 'the HEALTHCHECK CMD')[1]),
    uid: Number(m(/useradd --uid (\d+)/, df, 'the image user')[1]),
    gid: Number(m(/groupadd --system --gid (\d+)/, df, 'the image group')[1]),
    secretsDir: m(/^secrets=\$\{PMEMPS_SECRETS_DIR:-([^}]+)\}$/m, ep, "the entrypoint's secrets directory")[1],
  };
}

/** The PMEMPS_ variables the entrypoint adds for these secret files (it is run, with `env` as the command). */
function entrypointEnv(files: string[]): Record<string, string> {
  const dir = tempDir('k8s-secrets');
  temps.push(dir);
  for (const f of files) fs.writeFileSync(path.join(dir, f), '');
  const clean = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('PMEMPS_')));
  const out = execFileSync('sh', [path.join(ROOT, 'deploy', 'entrypoint.sh'), 'env'], { env: { ...clean, PMEMPS_SECRETS_DIR: dir }, encoding: 'utf8' });
  const mapped: Record<string, string> = {};
  for (const line of out.split('\n')) {
    const eq = line.indexOf('=');
    if (line.startsWith('PMEMPS_') && line.slice(0, eq) !== 'PMEMPS_SECRETS_DIR') mapped[line.slice(0, eq)] = line.slice(eq + 1);
  }
  return mapped;
}

const pserverHelp = ((): string => execFileSync(process.execPath, [path.join(ROOT, 'dist', 'server', 'pserver.js'), '--help'], { encoding: 'utf8' }))();

/** MiB in a Kubernetes quantity (binary or decimal suffix). */
function mib(q: string): number {
  const m = /^(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|k|M|G|T)?$/.exec(String(q)) ?? assert.fail(`not a quantity: ${q}`);
  const f: Record<string, number> = {
    '': 2 ** -20,
    Ki: 2 ** -10,
    Mi: 1,
    Gi: 2 ** 10,
    Ti: 2 ** 20,
    k: 1e3 / 2 ** 20,
    M: 1e6 / 2 ** 20,
    G: 1e9 / 2 ** 20,
    T: 1e12 / 2 ** 20,
  };
  return Number(m[1]) * f[m[2] ?? ''];
}

const TLS_SECRET_KEYS = ['tls.crt', 'tls.key']; // what every kubernetes.io/tls Secret has

/** Everything that does not agree, one line each; empty when the rendering is consistent. */
function problems(docs: Obj[], image: Image, readme: string): string[] {
  const out: string[] = [];
  const bad = (ok: boolean, what: string): void => void (ok || out.push(what));
  const one = (kind: string): Obj | undefined => {
    const all = docs.filter((d) => d.kind === kind);
    bad(all.length === 1, `${all.length} ${kind}s, want 1`);
    return all[0];
  };
  const sts = one('StatefulSet');
  const svc = one('Service');
  const pdb = one('PodDisruptionBudget');
  if (!sts || !svc || !pdb) return out;
  const pod = sts.spec.template;
  const spec = pod.spec;
  const sub = (sel: Obj | undefined, labels: Obj): boolean => !!sel && Object.keys(sel).length > 0 && Object.entries(sel).every(([k, v]) => labels[k] === v);
  bad(sts.spec.serviceName === svc.metadata.name, `serviceName ${sts.spec.serviceName} is not the Service ${svc.metadata.name}`);
  bad(svc.spec.clusterIP === 'None', 'the Service is not headless');
  for (const [what, sel] of [
    ['StatefulSet', sts.spec.selector?.matchLabels],
    ['Service', svc.spec.selector],
    ['PodDisruptionBudget', pdb.spec.selector?.matchLabels],
  ] as const)
    bad(sub(sel, pod.metadata.labels ?? {}), `the ${what} selector does not select the pods`);

  bad(spec.containers.length === 1, 'one container per pod');
  const c = spec.containers[0];
  bad(c.command === undefined, 'a command replaces the entrypoint, which maps the secrets');
  const env: Record<string, string> = {};
  for (const e of c.env ?? []) if (e.value !== undefined) env[e.name] = String(e.value);
  const args: string[] = (c.args ?? []).map(String);

  // Every option named exists, in server/config.ts and in pserver --help.
  const byEnv = new Map(OPTIONS.map((o) => [envName(o.name), o.name]));
  const used = new Set<string>();
  for (const k of Object.keys(env).filter((k) => k.startsWith('PMEMPS_') && k !== 'PMEMPS_SECRETS_DIR')) {
    const o = byEnv.get(k);
    bad(o !== undefined, `${k} is not an option of server/config.ts`);
    if (o) used.add(o);
  }
  for (const a of args.filter((a) => a.startsWith('--'))) {
    const name = a.slice(2).split('=')[0];
    bad(
      OPTIONS.some((o) => o.name === name),
      `${a} is not an option of server/config.ts`,
    );
    used.add(name);
  }
  for (const o of used) bad(new RegExp(`--${o}\\b`).test(pserverHelp), `--${o} is not in pserver --help`);

  // Secrets: one projected volume at the entrypoint's directory, of files it maps.
  const secretsDir = env.PMEMPS_SECRETS_DIR ?? image.secretsDir;
  const byName = new Map<string, Obj>((spec.volumes ?? []).map((v: Obj) => [v.name, v]));
  const mount = (c.volumeMounts ?? []).find((m: Obj) => m.mountPath === secretsDir);
  const sv = mount && byName.get(mount.name);
  bad(!!sv?.projected, `no projected secret volume mounted at the entrypoint's ${secretsDir}`);
  const files: string[] = [];
  const secretNames: string[] = [];
  for (const src of sv?.projected?.sources ?? []) {
    if (!src.secret) continue;
    secretNames.push(src.secret.name);
    files.push(...(src.secret.items ? src.secret.items.map((i: Obj) => i.path) : TLS_SECRET_KEYS));
  }
  bad(((sv?.projected?.defaultMode ?? 0o644) & 0o040) !== 0, 'secret files not readable by the group (fsGroup)');
  for (const n of secretNames)
    bad(
      new RegExp(`kubectl create secret \\S+ ${n.replace(/[.-]/g, '\\$&')}\\b`).test(readme),
      `secret ${n}: deploy/k8s/README.md does not say how to create it`,
    );
  const mapped = entrypointEnv(files);
  for (const f of files)
    bad(
      Object.values(mapped).some((p) => path.basename(p) === f),
      `the entrypoint does not use the secret file ${f}`,
    );
  for (const k of Object.keys(mapped)) bad(byEnv.has(k), `the entrypoint sets ${k}, not an option of server/config.ts`);

  // The configuration the server will run with: the manifest's variables,
  // what the entrypoint adds, the defaults; validated by server/config.ts.
  let cfg: PserverConfig | undefined;
  try {
    cfg = loadConfig(args, { ...env, ...mapped }, { isTTY: false }).config;
  } catch (e) {
    out.push(`pserver would refuse this configuration: ${(e as Error).message}`);
  }
  if (!cfg) return out;

  // Ports: options = container = Service = probes = scrape annotation.
  const ports = new Map<string, number>((c.ports ?? []).map((p: Obj) => [p.name, p.containerPort]));
  const grpcPort = splitHostPort(cfg.bind)?.port;
  const metricsPort = cfg.metricsBind ? splitHostPort(cfg.metricsBind)?.port : undefined;
  bad(ports.get('grpc') === grpcPort, `container port grpc ${ports.get('grpc')} is not --bind's ${grpcPort}`);
  bad(
    metricsPort !== undefined && ports.get('metrics') === metricsPort,
    `container port metrics ${ports.get('metrics')} is not --metrics-bind's ${metricsPort}`,
  );
  for (const p of svc.spec.ports ?? []) {
    const target = typeof p.targetPort === 'string' ? ports.get(p.targetPort) : (p.targetPort ?? p.port);
    bad(
      target !== undefined && target === p.port && [...ports.values()].includes(target),
      `Service port ${p.name} ${p.port} -> ${p.targetPort} is not a container port of the same number`,
    );
  }
  const ann = pod.metadata.annotations ?? {};
  bad(ann['prometheus.io/scrape'] === 'true', 'no prometheus.io/scrape annotation');
  bad(Number(ann['prometheus.io/port']) === metricsPort, `prometheus.io/port ${ann['prometheus.io/port']} is not --metrics-bind's ${metricsPort}`);
  bad(ann['prometheus.io/path'] === '/metrics', 'prometheus.io/path is not /metrics');
  const probeCmd = [image.entrypoint, ...image.healthCmd, `127.0.0.1:${grpcPort}`];
  for (const kind of ['startupProbe', 'readinessProbe', 'livenessProbe']) {
    const cmd = c[kind]?.exec?.command;
    bad(
      JSON.stringify(cmd) === JSON.stringify(probeCmd),
      `${kind} ${JSON.stringify(cmd)} is not the entrypoint with the image's HEALTHCHECK on the gRPC port (${JSON.stringify(probeCmd)})`,
    );
  }

  bad(
    spec.terminationGracePeriodSeconds >= cfg.drainSeconds + CLOSE_SECONDS,
    `terminationGracePeriodSeconds ${spec.terminationGracePeriodSeconds} leaves less than ${CLOSE_SECONDS} s after the ${cfg.drainSeconds} s drain for the clean close`,
  );
  const sc = spec.securityContext ?? {};
  bad(
    sc.runAsUser === image.uid && sc.runAsGroup === image.gid && sc.fsGroup === image.gid,
    `runAsUser/runAsGroup/fsGroup ${sc.runAsUser}/${sc.runAsGroup}/${sc.fsGroup} are not the image's ${image.uid}/${image.gid}`,
  );

  // The pool: mounted at --pmem, from exactly one source.
  const poolMount = (c.volumeMounts ?? []).find((m: Obj) => m.mountPath === cfg!.pmem);
  bad(!!poolMount, `nothing mounted at --pmem ${cfg.pmem}`);
  const claim = (sts.spec.volumeClaimTemplates ?? []).find((t: Obj) => t.metadata.name === poolMount?.name);
  const vol = byName.get(poolMount?.name);
  bad(!!claim !== !!vol, `the pool volume ${poolMount?.name} must be a claim template or a pod volume, not ${claim ? 'both' : 'neither'}`);
  let charged = 0;
  if (claim)
    bad(
      mib(claim.spec.resources.requests.storage) >= VOLUME_OVER_POOL * cfg.poolSizeMb,
      `claim ${claim.spec.resources.requests.storage} is less than ${VOLUME_OVER_POOL} x --pool-size`,
    );
  if (vol?.emptyDir) {
    bad(vol.emptyDir.medium === 'Memory', 'an emptyDir pool on the node disk: use medium Memory (or a DAX mount)');
    const size = vol.emptyDir.sizeLimit ? mib(vol.emptyDir.sizeLimit) : 0;
    bad(size >= cfg.poolSizeMb, `emptyDir sizeLimit ${vol.emptyDir.sizeLimit} is under --pool-size`);
    charged = size; // tmpfs pages count against the pod's memory limit
  }
  if (vol?.hostPath) bad(!!poolMount?.subPathExpr, 'a hostPath pool without a per-pod subPathExpr: two shards on a node would share it');

  // Memory: the rule, with requests = limits.
  const scratch = Math.max(cfg.scratchMb, SCRATCH_PER_MESSAGE * cfg.maxMessageMb);
  const want = cfg.cacheMb + cfg.limits.replyMb + cfg.limits.recvMb + scratch + OVERHEAD_MIB + charged;
  const lim = c.resources?.limits?.memory;
  bad(
    lim !== undefined && mib(lim) === want,
    `memory limit ${lim} is not cache-mb + reply-mb + recv-mb + max(scratch-mb, ${SCRATCH_PER_MESSAGE} x max-message-mb) + ${OVERHEAD_MIB}${charged ? ' + the tmpfs pool' : ''} = ${want}Mi`,
  );
  bad(c.resources?.requests?.memory === lim, 'memory requests differ from limits (not Guaranteed)');
  return out;
}

describe('Kubernetes manifests (deploy/k8s)', () => {
  const image = readImage();
  const readme = fs.readFileSync(path.join(K8S, 'README.md'), 'utf8');
  const rendered = new Map<string, Obj[]>();

  test(`kubectl is there (${KUBECTL})`, () => {
    const r = spawnSync(KUBECTL, ['version', '--client'], { encoding: 'utf8', timeout: 10_000 });
    if (r.error || r.status !== 0)
      assert.fail(`cannot run ${KUBECTL}: ${r.error?.message ?? r.stderr}; run ./run.sh setup (installs Debian's kubernetes-client) or set PMEMPS_KUBECTL`);
    console.log(r.stdout.trim().split('\n').join('; '));
  });

  for (const dir of RENDERINGS)
    test(`${dir}: renders, and its parts agree with each other, the image and pserver`, () => {
      const docs = kustomize(dir);
      rendered.set(dir, docs);
      assert.deepEqual(problems(docs, image, readme), []);
    });

  test('the overlays put the pool where they say', () => {
    const pool = (dir: string): Obj => {
      const docs = rendered.get(dir) ?? kustomize(dir);
      const sts = docs.find((d) => d.kind === 'StatefulSet')!;
      return { claims: sts.spec.volumeClaimTemplates, vol: sts.spec.template.spec.volumes.find((v: Obj) => v.name === 'pool') };
    };
    const base = pool('base');
    assert.equal(base.claims?.[0]?.metadata.name, 'pool');
    assert.equal(base.vol, undefined);
    const host = pool('overlays/hostpath-dax');
    assert.equal(host.claims, undefined);
    assert.equal(host.vol?.hostPath?.type, 'Directory');
    const mem = pool('overlays/memory');
    assert.equal(mem.claims, undefined);
    assert.equal(mem.vol?.emptyDir?.medium, 'Memory');
  });

  test('the checks catch a deliberate mismatch', () => {
    const docs = rendered.get('base') ?? kustomize('base');
    assert.deepEqual(problems(docs, image, readme), [], 'the unchanged base passes');
    const broken = (what: string, change: (sts: Obj, svc: Obj) => void, expect: RegExp): void => {
      const copy = structuredClone(docs);
      change(
        copy.find((d) => d.kind === 'StatefulSet')!,
        copy.find((d) => d.kind === 'Service')!,
      );
      const found = problems(copy, image, readme);
      assert.ok(
        found.some((p) => expect.test(p)),
        `${what}: expected a problem matching ${expect}, got ${JSON.stringify(found)}`,
      );
    };
    const c = (sts: Obj): Obj => sts.spec.template.spec.containers[0];
    const setEnv = (sts: Obj, name: string, value: string): void => void (c(sts).env.find((e: Obj) => e.name === name).value = value);
    broken('scrape port', (sts) => (sts.spec.template.metadata.annotations['prometheus.io/port'] = '9465'), /prometheus\.io\/port 9465/);
    broken('metrics bind', (sts) => setEnv(sts, 'PMEMPS_METRICS_BIND', '0.0.0.0:9100'), /container port metrics 9464 is not --metrics-bind's 9100/);
    broken('grace period', (sts) => (sts.spec.template.spec.terminationGracePeriodSeconds = 30), /terminationGracePeriodSeconds 30/);
    broken('drain', (sts) => setEnv(sts, 'PMEMPS_DRAIN_SECONDS', '50'), /after the 50 s drain/);
    broken('option name', (sts) => c(sts).env.push({ name: 'PMEMPS_CACHE_MIB', value: '1' }), /PMEMPS_CACHE_MIB is not an option/);
    broken('flag name', (sts) => (c(sts).args = ['--cache-size', '1']), /--cache-size is not an option/);
    broken('option value', (sts) => setEnv(sts, 'PMEMPS_CACHE_MB', 'lots'), /would refuse.*--cache-mb must be a number/);
    broken('cache without memory', (sts) => setEnv(sts, 'PMEMPS_CACHE_MB', '8192'), /memory limit 5952Mi is not .* = 10048Mi/);
    // A call larger than --scratch-mb runs alone: 5 x 128 MiB of working memory.
    broken(
      'large messages without memory',
      (sts) => c(sts).env.push({ name: 'PMEMPS_MAX_MESSAGE_MB', value: '128' }),
      /memory limit 5952Mi is not .* = 6272Mi/,
    );
    broken(
      'secret mount',
      (sts) => (c(sts).volumeMounts.find((m: Obj) => m.name === 'secrets').mountPath = '/etc/pmemps'),
      /no projected secret volume mounted at the entrypoint's \/run\/secrets\/pmemps/,
    );
    broken(
      'secret file',
      (sts) => (sts.spec.template.spec.volumes.find((v: Obj) => v.name === 'secrets').projected.sources[1].secret.items[0].path = 'token'),
      /does not use the secret file token/,
    );
    broken(
      'secret name',
      (sts) => (sts.spec.template.spec.volumes.find((v: Obj) => v.name === 'secrets').projected.sources[0].secret.name = 'tls'),
      /secret tls: .*README/,
    );
    broken('probe port', (sts) => (c(sts).readinessProbe.exec.command[3] = '127.0.0.1:7001'), /readinessProbe/);
    broken('service port', (_sts, svc) => (svc.spec.ports[0].port = 7001), /Service port grpc 7001/);
    broken('pool mount', (sts) => setEnv(sts, 'PMEMPS_PMEM', '/pool'), /nothing mounted at --pmem \/pool/);
    broken('pool size', (sts) => setEnv(sts, 'PMEMPS_POOL_SIZE', '128G'), /claim 72Gi is less than/);
    broken('user', (sts) => (sts.spec.template.spec.securityContext.fsGroup = 0), /not the image's 10001\/10001/);
  });
});

describe('endpoints of a StatefulSet (worker/k8s.ts, examples/python_client.py)', () => {
  const cases = [
    { name: 'pmemps', service: 'pmemps', namespace: 'default', replicas: 2, port: 7000 },
    { name: 'ps', service: 'ps-headless', namespace: 'ml-prod', replicas: 3, port: 443, clusterDomain: 'k8s.example.org' },
    { name: 'p', service: 's', namespace: 'n', replicas: 1, port: 1 },
  ];
  const badCases = [
    { name: 'pmemps', service: 'pmemps', namespace: 'default', replicas: 0, port: 7000 },
    { name: 'pmemps', service: 'pmemps', namespace: 'default', replicas: 2, port: 70000 },
    { name: 'PMEMPS', service: 'pmemps', namespace: 'default', replicas: 2, port: 7000 },
    { name: 'pmemps', service: 'pm_emps', namespace: 'default', replicas: 2, port: 7000 },
    { name: 'pmemps', service: 'pmemps', namespace: 'Default', replicas: 2, port: 7000 },
    { name: 'a'.repeat(62), service: 'pmemps', namespace: 'default', replicas: 2, port: 7000 }, // "-1" makes 64 characters
    { name: 'pmemps', service: 'pmemps', namespace: 'default', replicas: 2, port: 7000, clusterDomain: 'cluster..local' },
  ];

  test('the SDK lists pod N as shard N', () => {
    assert.deepEqual(statefulSetEndpoints(cases[0]), ['pmemps-0.pmemps.default.svc.cluster.local:7000', 'pmemps-1.pmemps.default.svc.cluster.local:7000']);
    assert.deepEqual(statefulSetEndpoints(cases[1]), [
      'ps-0.ps-headless.ml-prod.svc.k8s.example.org:443',
      'ps-1.ps-headless.ml-prod.svc.k8s.example.org:443',
      'ps-2.ps-headless.ml-prod.svc.k8s.example.org:443',
    ]);
    assert.deepEqual(statefulSetEndpoints(cases[2]), ['p-0.s.n.svc.cluster.local:1']);
    assert.equal(statefulSetEndpoints({ ...cases[0], name: 'a'.repeat(61) }).length, 2, '63 characters is still a label');
    for (const b of badCases) assert.throws(() => statefulSetEndpoints(b), RangeError, JSON.stringify(b));
  });

  test('the Python example builds the same list and refuses the same names', () => {
    const py = (o: Obj): ReturnType<typeof spawnSync> =>
      spawnSync(
        PYTHON,
        [
          path.join(ROOT, 'examples', 'python_client.py'),
          '--print-endpoints',
          '--statefulset',
          o.name,
          '--service',
          o.service,
          '--namespace',
          o.namespace,
          '--replicas',
          String(o.replicas),
          '--port',
          String(o.port),
          ...(o.clusterDomain ? ['--cluster-domain', o.clusterDomain] : []),
        ],
        { encoding: 'utf8', timeout: 10_000, env: { ...process.env, PYTHONDONTWRITEBYTECODE: '1' } },
      );
    for (const o of cases) {
      const r = py(o);
      assert.equal(r.status, 0, `${PYTHON}: ${r.error?.message ?? r.stderr}`);
      assert.deepEqual(String(r.stdout).trim().split('\n'), statefulSetEndpoints(o));
    }
    for (const b of badCases) {
      const r = py(b);
      assert.equal(r.status, 2, `${JSON.stringify(b)} accepted: ${r.stdout}`);
      assert.match(String(r.stderr), /error: /);
    }
  });
});
