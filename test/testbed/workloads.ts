// The cluster's Kubernetes-shaped YAML in the shared `workloads/` folder (the agents' `files` source).
// Every write is atomic (hidden temp file + rename) so a watching agent never reads half a file.
import { randomBytes } from 'node:crypto';
import { readFile, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { parseAllDocuments, stringify } from 'yaml';

export type Labels = Record<string, string>;

/** The Pod object the testbed maintains for each pod. */
export interface PodObject {
  apiVersion: 'v1';
  kind: 'Pod';
  metadata: { name: string; namespace: string; uid: string; labels: Labels };
  spec: {
    nodeName: string;
    serviceAccountName: string;
    hostNetwork?: boolean;
    containers?: { name: string; ports?: { name: string; containerPort: number; protocol: 'TCP' | 'UDP' }[] }[];
  };
  status: {
    phase: 'Pending' | 'Running';
    hostIP: string;
    podIP?: string;
    podIPs?: { ip: string }[];
    conditions?: { type: 'Ready'; status: 'True' | 'False' }[];
  };
}

export interface NamespaceObject {
  apiVersion: 'v1';
  kind: 'Namespace';
  metadata: { name: string; labels: Labels };
}

/** File name of a Pod object inside workloads/. */
export function podFileName(namespace: string, name: string): string {
  return `pod-${namespace}-${name}.yaml`;
}

/** File name of a Namespace object inside workloads/. */
export function namespaceFileName(name: string): string {
  return `ns-${name}.yaml`;
}

/** Writes, reads and removes objects in one workloads directory. */
export class WorkloadsDir {
  constructor(readonly dir: string) {}

  /** Write one or several objects (a multi-document file) as `fileName`, atomically. */
  async write(fileName: string, docs: object | object[]): Promise<string> {
    if (fileName.includes('/') || fileName.startsWith('.')) throw new Error(`bad workload file name ${fileName}`);
    const list = Array.isArray(docs) ? docs : [docs];
    const text = list.map((d) => stringify(d)).join('---\n');
    const path = join(this.dir, fileName);
    const tmp = join(this.dir, `.${fileName}.${randomBytes(3).toString('hex')}.tmp`);
    await writeFile(tmp, text);
    await rename(tmp, path);
    return path;
  }

  /** Remove `fileName`; a missing file is fine. */
  async remove(fileName: string): Promise<void> {
    await rm(join(this.dir, fileName), { force: true });
  }

  /** The objects in `fileName` (parsed YAML documents). */
  async read(fileName: string): Promise<unknown[]> {
    const text = await readFile(join(this.dir, fileName), 'utf8');
    return parseAllDocuments(text).map((d) => d.toJS() as unknown);
  }

  writePod(pod: PodObject): Promise<string> {
    return this.write(podFileName(pod.metadata.namespace, pod.metadata.name), pod);
  }

  writeNamespace(name: string, labels: Labels): Promise<string> {
    const ns: NamespaceObject = { apiVersion: 'v1', kind: 'Namespace', metadata: { name, labels } };
    return this.write(namespaceFileName(name), ns);
  }
}
