#!/usr/bin/env node
// Container health check: asks the local shard's grpc.health.v1 service
// whether pmemps.v1.ParameterServer is SERVING. Exit 0 when it is, 1
// otherwise (docker HEALTHCHECK and Kubernetes exec probes read the code).
//
//   node dist/server/healthcheck.js [HOST:PORT]
//
// The address defaults to PMEMPS_BIND with a wildcard host replaced by
// loopback. When the server has TLS (PMEMPS_TLS_CERT), the probe trusts
// PMEMPS_HEALTH_CA, or the server's own certificate when that is unset (a
// self-signed one), and does not check the host name: it dials loopback,
// which the certificate need not name.
import * as fs from 'node:fs';
import * as grpc from '@grpc/grpc-js';
import { service as healthService } from 'grpc-health-check';

const SERVICE_NAME = 'pmemps.v1.ParameterServer';

export function probeAddress(bind: string | undefined): string {
  if (!bind) throw new Error('no address: pass HOST:PORT or set PMEMPS_BIND');
  const m = /^(.*):(\d+)$/.exec(bind);
  if (!m) throw new Error(`bad address "${bind}"`);
  const host = ['0.0.0.0', '[::]', '::', ''].includes(m[1]) ? '127.0.0.1' : m[1];
  return `${host}:${m[2]}`;
}

function credentials(): grpc.ChannelCredentials {
  const cert = process.env.PMEMPS_TLS_CERT;
  if (!cert) return grpc.credentials.createInsecure();
  const ca = fs.readFileSync(process.env.PMEMPS_HEALTH_CA || cert);
  // With client certificates required, the server's own pair is the probe's.
  const mutual = process.env.PMEMPS_TLS_CLIENT_CA && process.env.PMEMPS_TLS_KEY;
  return grpc.credentials.createSsl(ca, mutual ? fs.readFileSync(process.env.PMEMPS_TLS_KEY!) : null, mutual ? fs.readFileSync(cert) : null, {
    checkServerIdentity: () => undefined,
  });
}

export function check(address: string, timeoutMs = 4000): Promise<string> {
  const Health = grpc.makeGenericClientConstructor(healthService, 'Health');
  const client = new Health(address, credentials()) as grpc.Client & Record<string, any>;
  return new Promise((resolve, reject) =>
    client.Check({ service: SERVICE_NAME }, { deadline: Date.now() + timeoutMs }, (err: grpc.ServiceError | null, res: { status: string | number }) => {
      client.close();
      if (err) reject(err);
      else resolve(typeof res.status === 'number' ? (['UNKNOWN', 'SERVING', 'NOT_SERVING', 'SERVICE_UNKNOWN'][res.status] ?? String(res.status)) : res.status);
    }),
  );
}

async function main(): Promise<void> {
  const address = probeAddress(process.argv[2] ?? process.env.PMEMPS_BIND);
  try {
    const status = await check(address);
    process.stdout.write(`${address}: ${status}\n`);
    process.exit(status === 'SERVING' ? 0 : 1);
  } catch (e) {
    process.stdout.write(`${address}: ${(e as Error).message}\n`);
    process.exit(1);
  }
}

if (require.main === module) void main();
