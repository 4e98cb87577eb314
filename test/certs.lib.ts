// Certificates made at test time with the openssl CLI (Debian's openssl,
// installed by run.sh setup): a CA, a server certificate for 127.0.0.1 and
// localhost signed by it, a client certificate signed by it, and a second
// CA with a client certificate of its own (a stranger's). EC P-256 keys:
// each takes milliseconds.
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';

export interface Certs {
  dir: string;
  caFile: string;
  serverCert: string;
  serverKey: string;
  clientCert: string;
  clientKey: string;
  /** Signed by the other CA. */
  foreignCaFile: string;
  foreignCert: string;
  foreignKey: string;
  /** The server's certificate and key, expired yesterday. */
  expiredCert: string;
  /** PEM contents of the files above, by the same names. */
  pem: (file: string) => Buffer;
}

function openssl(dir: string, args: string[]): void {
  try {
    execFileSync('openssl', args, { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'] });
  } catch (e) {
    const err = e as { code?: string; stderr?: Buffer };
    if (err.code === 'ENOENT') throw new Error('the openssl CLI is needed to make test certificates: apt-get install openssl (./run.sh setup does)');
    throw new Error(`openssl ${args.join(' ')} failed: ${err.stderr?.toString() ?? e}`);
  }
}

const EC = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];

function makeCa(dir: string, name: string): void {
  openssl(dir, [
    'req',
    '-x509',
    ...EC,
    '-keyout',
    `${name}.key`,
    '-out',
    `${name}.pem`,
    '-days',
    '2',
    '-subj',
    `/CN=pmemps test ${name}`,
    '-addext',
    'basicConstraints=critical,CA:TRUE',
    '-addext',
    'keyUsage=critical,keyCertSign,cRLSign',
  ]);
}

function makeLeaf(dir: string, name: string, ca: string, ext: string, days = 2, keyOf = name): void {
  fs.writeFileSync(path.join(dir, `${name}.ext`), ext);
  if (keyOf === name) openssl(dir, ['req', ...EC, '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', `/CN=${name}`]);
  else openssl(dir, ['req', '-new', '-key', `${keyOf}.key`, '-out', `${name}.csr`, '-subj', `/CN=${name}`]);
  openssl(dir, [
    'x509',
    '-req',
    '-in',
    `${name}.csr`,
    '-CA',
    `${ca}.pem`,
    '-CAkey',
    `${ca}.key`,
    '-set_serial',
    String(fs.readdirSync(dir).length),
    '-days',
    String(days),
    '-extfile',
    `${name}.ext`,
    '-out',
    `${name}.pem`,
  ]);
}

export function makeCerts(dir: string): Certs {
  fs.mkdirSync(dir, { recursive: true });
  makeCa(dir, 'ca');
  makeCa(dir, 'foreign-ca');
  const server = 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n';
  const client = 'extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n';
  makeLeaf(dir, 'server', 'ca', server);
  makeLeaf(dir, 'client', 'ca', client);
  makeLeaf(dir, 'foreign', 'foreign-ca', client);
  // Not after one day before its start: openssl sets notBefore to now.
  makeLeaf(dir, 'expired', 'ca', server, -1, 'server');
  const f = (n: string): string => path.join(dir, n);
  return {
    dir,
    caFile: f('ca.pem'),
    serverCert: f('server.pem'),
    serverKey: f('server.key'),
    clientCert: f('client.pem'),
    clientKey: f('client.key'),
    foreignCaFile: f('foreign-ca.pem'),
    foreignCert: f('foreign.pem'),
    foreignKey: f('foreign.key'),
    expiredCert: f('expired.pem'),
    pem: (file) => fs.readFileSync(file),
  };
}
