// The endpoint list of a cluster run as a Kubernetes StatefulSet
// (deploy/k8s): pod N is shard N, and the headless Service gives it the
// stable name <name>-N.<service>.<namespace>.svc.<cluster domain>. The list
// is in shard order, which is what PsClient.connect needs; the Python
// example's statefulset_endpoints() builds the same one.

export interface StatefulSetEndpointsOptions {
  /** The StatefulSet's metadata.name (pods are <name>-0, <name>-1, ...). */
  name: string;
  /** Its spec.serviceName: the headless Service. */
  service: string;
  namespace: string;
  /** spec.replicas: the number of shards. */
  replicas: number;
  /** The gRPC port (the Service's and the container's). */
  port: number;
  /** The cluster's DNS domain, when it is not the usual one. */
  clusterDomain?: string;
}

// A DNS-1123 label: what Kubernetes allows for Service and namespace names,
// and a pod name must be one too to have a DNS record.
const LABEL = /^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/;
const DOMAIN = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;

export function statefulSetEndpoints(o: StatefulSetEndpointsOptions): string[] {
  const domain = o.clusterDomain ?? 'cluster.local';
  if (!Number.isInteger(o.replicas) || o.replicas < 1) throw new RangeError(`replicas must be a whole number of at least 1, got ${o.replicas}`);
  if (!Number.isInteger(o.port) || o.port < 1 || o.port > 65535) throw new RangeError(`port must be 1..65535, got ${o.port}`);
  for (const [what, v] of [
    ['service', o.service],
    ['namespace', o.namespace],
  ] as const)
    if (!LABEL.test(v)) throw new RangeError(`${what} "${v}" is not a DNS label (lower-case letters, digits and '-', at most 63)`);
  // The longest pod name must still be a label, or that pod has no DNS name.
  const last = `${o.name}-${o.replicas - 1}`;
  if (!LABEL.test(last))
    throw new RangeError(`pod name "${last}" is not a DNS label (name: lower-case letters, digits and '-', short enough for "-${o.replicas - 1}")`);
  if (!DOMAIN.test(domain)) throw new RangeError(`cluster domain "${domain}" is not a DNS name`);
  return Array.from({ length: o.replicas }, (_, i) => `${o.name}-${i}.${o.service}.${o.namespace}.svc.${domain}:${o.port}`);
}
