// A Docker daemon of the test's own, and the base image the Dockerfile
// names. The daemon keeps everything under one temporary directory (data
// root, exec root, pid file, socket, and a containerd of its own, since
// dockerd would otherwise join a system containerd it finds running), uses a
// bridge the test creates, and leaves the host's firewall and forwarding
// alone (--iptables=false --ip-forward=false): published ports still work
// through docker-proxy on 127.0.0.1, and image builds use the host's network
// (docker build --network host) to reach Debian and npm as the host does.
// close() removes containers, volumes, images, the daemons, the bridge and
// the directory, whatever state the test left them in.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

const IS_ROOT = process.getuid?.() === 0;

/** Runs a command to completion; throws with its output when it fails. */
export function sh(cmd: string, args: string[], opts: { input?: string; timeoutMs?: number; env?: NodeJS.ProcessEnv } = {}): string {
  const argv = IS_ROOT ? [cmd, ...args] : ['sudo', cmd, ...args];
  const r = spawnSync(argv[0], argv.slice(1), {
    encoding: 'utf8',
    input: opts.input,
    timeout: opts.timeoutMs ?? 600_000,
    maxBuffer: 64 * 2 ** 20,
    env: opts.env ?? process.env,
  });
  if (r.error) throw new Error(`${cmd} ${args.join(' ')}: ${r.error.message}`);
  if (r.status !== 0)
    throw new Error(`${cmd} ${args.join(' ')} exited ${r.status ?? r.signal}:\n${(r.stdout ?? '').slice(-3000)}\n${(r.stderr ?? '').slice(-3000)}`);
  return r.stdout;
}

function which(name: string, extra: string[] = []): string | null {
  for (const dir of [...(process.env.PATH ?? '').split(':'), ...extra]) {
    const p = path.join(dir, name);
    try {
      fs.accessSync(p, fs.constants.X_OK);
      return p;
    } catch {
      /* next */
    }
  }
  return null;
}

const SBIN = ['/usr/sbin', '/sbin'];

/** Installs Debian's docker.io (and, for the stand-in base image, debootstrap) when missing, as ./run.sh setup installs its packages. */
export function ensurePackages(): void {
  const pkgs: string[] = [];
  if (!which('dockerd', SBIN) || !which('containerd', SBIN)) pkgs.push('docker.io');
  if (!which('debootstrap', SBIN)) pkgs.push('debootstrap');
  if (pkgs.length === 0) return;
  console.log(`container test: installing ${pkgs.join(' ')}`);
  sh('apt-get', ['update', '-qq']);
  sh('apt-get', ['install', '-y', '-qq', ...pkgs], { env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' } });
}

async function until<T>(what: string, deadlineMs: number, probe: () => T | null | Promise<T | null>, died?: () => string | null): Promise<T> {
  const end = Date.now() + deadlineMs;
  for (;;) {
    const gone = died?.();
    if (gone) throw new Error(`${what}: ${gone}`);
    const v = await probe();
    if (v !== null) return v;
    if (Date.now() > end) throw new Error(`${what}: not within ${deadlineMs / 1000} s`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

function tail(file: string): string {
  try {
    return fs.readFileSync(file, 'utf8').slice(-3000);
  } catch {
    return '';
  }
}

interface Daemon {
  proc: ChildProcess;
  exited: Promise<void>;
}

function daemon(cmd: string, args: string[], log: string): Daemon {
  const fd = fs.openSync(log, 'a');
  const proc = spawn(cmd, args, { stdio: ['ignore', fd, fd] });
  fs.closeSync(fd);
  const exited = new Promise<void>((r) => proc.once('exit', () => r()));
  return { proc, exited };
}

async function stopDaemon(d: Daemon | null, graceMs: number): Promise<void> {
  if (!d || d.proc.exitCode !== null || d.proc.signalCode !== null) return;
  d.proc.kill('SIGTERM');
  const timer = setTimeout(() => d.proc.kill('SIGKILL'), graceMs);
  await d.exited;
  clearTimeout(timer);
}

export class PrivateDocker {
  readonly dir: string;
  readonly socket: string;
  readonly client: string;
  readonly bridge: string;
  private containerd: Daemon | null = null;
  private dockerd: Daemon | null = null;
  private bridgeMade = false;

  private constructor() {
    this.dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pmemps-docker-'));
    this.socket = path.join(this.dir, 'docker.sock');
    // The client of the same package as the daemon: a newer client elsewhere
    // on the PATH may expect a builder (buildx) Debian's daemon lacks.
    const dockerd = which('dockerd', SBIN)!;
    const sibling = ['/usr/bin/docker', path.join(path.dirname(dockerd), 'docker')].find((p) => which(path.basename(p), [path.dirname(p)]) === p);
    this.client = sibling ?? which('docker') ?? 'docker';
    this.bridge = `pmemps-${process.pid % 10_000_000}`;
  }

  /** Starts containerd and dockerd; throws (the test fails) when either will not serve. */
  static async start(): Promise<PrivateDocker> {
    const d = new PrivateDocker();
    try {
      await d.boot();
    } catch (e) {
      await d.close();
      throw e;
    }
    return d;
  }

  private async boot(): Promise<void> {
    const dir = this.dir;
    // A /24 in 10.213.0.0/16 that no route of the host covers.
    const routes = sh('ip', ['-4', 'route', 'show']);
    const third = [...Array(250).keys()].map((i) => (process.pid + i) % 250).find((x) => !routes.includes(`10.213.${x}.`));
    if (third === undefined) throw new Error('no free 10.213.x.0/24 for the bridge');
    sh('ip', ['link', 'add', this.bridge, 'type', 'bridge']);
    this.bridgeMade = true;
    sh('ip', ['addr', 'add', `10.213.${third}.1/24`, 'dev', this.bridge]);
    sh('ip', ['link', 'set', this.bridge, 'up']);

    const csock = path.join(dir, 'containerd.sock');
    fs.writeFileSync(
      path.join(dir, 'containerd.toml'),
      [
        'version = 2',
        `root = "${path.join(dir, 'containerd')}"`,
        `state = "${path.join(dir, 'containerd-state')}"`,
        // Kubernetes' plugin is not needed and would look for CNI on the host.
        'disabled_plugins = ["io.containerd.grpc.v1.cri"]',
        '[grpc]',
        `  address = "${csock}"`,
        '',
      ].join('\n'),
    );
    const clog = path.join(dir, 'containerd.log');
    this.containerd = daemon(which('containerd', SBIN)!, ['--config', path.join(dir, 'containerd.toml')], clog);
    const cd = this.containerd;
    await until(
      'containerd',
      30_000,
      () => (fs.existsSync(csock) ? true : null),
      () => (cd.proc.exitCode !== null ? `exited:\n${tail(clog)}` : null),
    );

    const dlog = path.join(dir, 'dockerd.log');
    this.dockerd = daemon(
      which('dockerd', SBIN)!,
      [
        '--data-root',
        path.join(dir, 'data'),
        '--exec-root',
        path.join(dir, 'exec'),
        '--pidfile',
        path.join(dir, 'dockerd.pid'),
        '--host',
        `unix://${this.socket}`,
        '--containerd',
        csock,
        '--bridge',
        this.bridge,
        '--iptables=false',
        '--ip-forward=false',
        '--ip-masq=false',
      ],
      dlog,
    );
    const dd = this.dockerd;
    await until(
      'dockerd',
      60_000,
      () => (spawnSync(this.client, ['-H', `unix://${this.socket}`, 'version'], { stdio: 'ignore' }).status === 0 ? true : null),
      () => (dd.proc.exitCode !== null ? `exited:\n${tail(dlog)}` : null),
    );
  }

  /** docker CLI against this daemon; throws on failure. */
  docker(args: string[], opts: { input?: string; timeoutMs?: number } = {}): string {
    const r = spawnSync(this.client, ['-H', `unix://${this.socket}`, ...args], {
      encoding: 'utf8',
      input: opts.input,
      timeout: opts.timeoutMs ?? 600_000,
      maxBuffer: 64 * 2 ** 20,
    });
    if (r.error) throw new Error(`docker ${args.join(' ')}: ${r.error.message}`);
    if (r.status !== 0)
      throw new Error(`docker ${args.join(' ')} exited ${r.status ?? r.signal}:\n${(r.stdout ?? '').slice(-4000)}\n${(r.stderr ?? '').slice(-4000)}`);
    return r.stdout;
  }

  /** The same, without blocking the event loop (the SDK's calls go on meanwhile). */
  dockerAsync(args: string[]): Promise<string> {
    return new Promise((resolve, reject) => {
      const p = spawn(this.client, ['-H', `unix://${this.socket}`, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
      let out = '';
      let err = '';
      p.stdout.on('data', (d: Buffer) => (out += d.toString()));
      p.stderr.on('data', (d: Buffer) => (err += d.toString()));
      p.once('error', reject);
      p.once('exit', (code) => (code === 0 ? resolve(out) : reject(new Error(`docker ${args.join(' ')} exited ${code}: ${err}`))));
    });
  }

  /**
   * Makes `tag` present: already there, pulled, or else a stand-in (no
   * registry reachable): a debootstrap --variant=minbase root with the host's
   * Node at the official image's paths (/usr/local/bin/node, npm under
   * /usr/local/lib/node_modules/npm, headers under /usr/local/include/node),
   * its user `node` (uid 1000) and NODE_VERSION. When the host trusts an
   * extra CA for its egress (NODE_EXTRA_CA_CERTS), the stand-in trusts it
   * too, so npm in a build reaches the registry as the host does.
   */
  async ensureBaseImage(tag: string, majorWanted: number): Promise<'present' | 'pulled' | 'stand-in'> {
    if (spawnSync(this.client, ['-H', `unix://${this.socket}`, 'image', 'inspect', tag], { stdio: 'ignore' }).status === 0) return 'present';
    const pull = spawnSync(this.client, ['-H', `unix://${this.socket}`, 'pull', '-q', tag], { encoding: 'utf8', timeout: 300_000 });
    if (pull.status === 0) return 'pulled';
    console.log(`container test: cannot pull ${tag} (${(pull.stderr || pull.error?.message || '').trim().split('\n').at(-1)}); making a stand-in`);

    const major = Number(process.versions.node.split('.')[0]);
    if (major !== majorWanted) throw new Error(`the stand-in for ${tag} carries the host's Node, which is ${process.version}, not ${majorWanted}`);
    const prefix = path.resolve(path.dirname(process.execPath), '..');
    const headers = path.join(prefix, 'include', 'node');
    const npm = path.join(prefix, 'lib', 'node_modules', 'npm');
    for (const p of [path.join(headers, 'node_api.h'), path.join(headers, 'common.gypi'), path.join(npm, 'bin', 'npm-cli.js')])
      if (!fs.existsSync(p)) throw new Error(`the stand-in needs the host's Node headers and npm next to ${process.execPath}; ${p} is missing`);

    const root = path.join(this.dir, 'rootfs');
    const mirror = process.env.PMEMPS_TEST_DEBIAN_MIRROR ?? 'http://deb.debian.org/debian';
    sh('debootstrap', ['--variant=minbase', 'bookworm', root, mirror], { timeoutMs: 900_000 });
    const local = path.join(root, 'usr', 'local');
    fs.mkdirSync(path.join(local, 'bin'), { recursive: true });
    fs.mkdirSync(path.join(local, 'include'), { recursive: true });
    fs.mkdirSync(path.join(local, 'lib', 'node_modules'), { recursive: true });
    fs.copyFileSync(process.execPath, path.join(local, 'bin', 'node'));
    fs.chmodSync(path.join(local, 'bin', 'node'), 0o755);
    fs.cpSync(headers, path.join(local, 'include', 'node'), { recursive: true });
    fs.cpSync(npm, path.join(local, 'lib', 'node_modules', 'npm'), { recursive: true, verbatimSymlinks: true });
    fs.symlinkSync('../lib/node_modules/npm/bin/npm-cli.js', path.join(local, 'bin', 'npm'));
    fs.symlinkSync('../lib/node_modules/npm/bin/npx-cli.js', path.join(local, 'bin', 'npx'));
    sh('chroot', [root, 'groupadd', '--gid', '1000', 'node']);
    sh('chroot', [root, 'useradd', '--uid', '1000', '--gid', 'node', '--shell', '/bin/bash', '--create-home', 'node']);
    // As the official image: no package lists, no downloaded packages.
    for (const d of ['var/lib/apt/lists', 'var/cache/apt/archives'])
      for (const f of fs.readdirSync(path.join(root, d)))
        if (f !== 'partial' && f !== 'lock') fs.rmSync(path.join(root, d, f), { recursive: true, force: true });
    const changes = [`ENV NODE_VERSION=${process.versions.node}`, 'CMD ["node"]'];
    const extraCa = process.env.NODE_EXTRA_CA_CERTS;
    if (extraCa && fs.existsSync(extraCa)) {
      fs.mkdirSync(path.join(root, 'etc', 'ssl', 'certs'), { recursive: true });
      fs.copyFileSync(extraCa, path.join(root, 'etc', 'ssl', 'certs', 'host-egress-ca.crt'));
      changes.push('ENV NODE_EXTRA_CA_CERTS=/etc/ssl/certs/host-egress-ca.crt');
    }
    await new Promise<void>((resolve, reject) => {
      const tar = spawn('tar', ['-C', root, '--numeric-owner', '-c', '.'], { stdio: ['ignore', 'pipe', 'pipe'] });
      const imp = spawn(this.client, ['-H', `unix://${this.socket}`, 'import', ...changes.flatMap((c) => ['-c', c]), '-', tag], {
        stdio: ['pipe', 'ignore', 'pipe'],
      });
      let err = '';
      imp.stderr.on('data', (d: Buffer) => (err += d.toString()));
      tar.stderr.on('data', (d: Buffer) => (err += d.toString()));
      tar.stdout.pipe(imp.stdin);
      imp.once('exit', (code) => (code === 0 ? resolve() : reject(new Error(`docker import exited ${code}: ${err}`))));
    });
    fs.rmSync(root, { recursive: true, force: true });
    return 'stand-in';
  }

  /** Removes every container, volume and image of this daemon, then the daemons, the bridge and the directory. */
  async close(): Promise<void> {
    const errors: string[] = [];
    const attempt = (what: string, fn: () => void): void => {
      try {
        fn();
      } catch (e) {
        errors.push(`${what}: ${(e as Error).message}`);
      }
    };
    if (this.dockerd && this.dockerd.proc.exitCode === null) {
      const list = (args: string[]): string[] => this.docker(args).split('\n').filter(Boolean);
      attempt('containers', () => {
        const ids = list(['ps', '-aq']);
        if (ids.length) this.docker(['rm', '-f', '-v', ...ids]);
      });
      attempt('volumes', () => {
        const vs = list(['volume', 'ls', '-q']);
        if (vs.length) this.docker(['volume', 'rm', '-f', ...vs]);
      });
      attempt('images', () => {
        // Tagged images first; removing one removes its parent layers, so the
        // prune that follows finds only what no tag led to.
        const tagged = [...new Set(list(['images', '-q']))];
        if (tagged.length) this.docker(['rmi', '-f', ...tagged]);
        this.docker(['image', 'prune', '-a', '-f']);
        const left = list(['images', '-aq']);
        if (left.length) throw new Error(`images left: ${left.join(' ')}`);
      });
    }
    await stopDaemon(this.dockerd, 30_000);
    await stopDaemon(this.containerd, 15_000);
    // dockerd leaves its network namespace mounted, and a debootstrap cut
    // short leaves /proc mounted in its root: unmount, deepest first.
    const mounts = fs
      .readFileSync('/proc/mounts', 'utf8')
      .split('\n')
      .map((l) => l.split(' ')[1])
      .filter((m) => m && (m === this.dir || m.startsWith(this.dir + '/')))
      .sort((a, b) => b.length - a.length);
    for (const m of mounts) attempt(`umount ${m}`, () => sh('umount', ['-l', m]));
    if (this.bridgeMade) attempt('bridge', () => sh('ip', ['link', 'del', this.bridge]));
    attempt('directory', () => fs.rmSync(this.dir, { recursive: true, force: true }));
    if (errors.length) throw new Error(`cleanup of the private Docker daemon:\n${errors.join('\n')}`);
  }
}
