/**
 * Where the API is and which key to send: explicit options, else
 * NULLSPACE_API_URL / NULLSPACE_API_KEY, else (in Node, on the server host)
 * the key file the server writes, like the CLI and the Python SDK. Nothing
 * here imports a Node module up front: the key file is read through a
 * dynamic import only when Node is what runs it.
 */

import { AuthenticationError, InvalidArgumentError } from "./errors.js";

export const DEFAULT_API_URL = "http://127.0.0.1:7700";

interface NodeProcess {
  env: Record<string, string | undefined>;
  versions?: { node?: string };
}

export function nodeProcess(): NodeProcess | undefined {
  const p = (globalThis as { process?: NodeProcess }).process;
  return p?.versions?.node ? p : undefined;
}

export function resolveUrl(apiUrl?: string): string {
  const u = apiUrl || nodeProcess()?.env["NULLSPACE_API_URL"] || DEFAULT_API_URL;
  let parsed: URL;
  try {
    parsed = new URL(u);
  } catch {
    throw new InvalidArgumentError(`apiUrl ${JSON.stringify(u)} is not a URL`, {
      code: "invalid_argument", suggestedAction: "pass apiUrl: 'http://host:7700' or set NULLSPACE_API_URL",
    });
  }
  if (parsed.protocol !== "http:" && parsed.protocol !== "https:") {
    throw new InvalidArgumentError(`apiUrl ${JSON.stringify(u)} is not an http(s) URL`, { code: "invalid_argument" });
  }
  return u.replace(/\/+$/, "");
}

export async function resolveKey(apiKey?: string): Promise<string> {
  if (apiKey) return apiKey;
  const p = nodeProcess();
  if (!p) return "";
  if (p.env["NULLSPACE_API_KEY"]) return p.env["NULLSPACE_API_KEY"];
  const dir = p.env["NULLSPACE_DATA_DIR"] || "/var/lib/nullspace";
  const path = `${dir}/api-key`;
  const mod = "node:fs/promises";
  const fs = (await import(/* @vite-ignore */ /* webpackIgnore: true */ mod)) as {
    readFile(p: string, enc: string): Promise<string>;
  };
  try {
    return (await fs.readFile(path, "utf8")).trim();
  } catch (e) {
    if ((e as { code?: string }).code === "ENOENT") return "";
    throw new AuthenticationError(`cannot read the API key file ${path}: ${(e as Error).message}`, {
      code: "unauthenticated", cause: e,
      suggestedAction: `set NULLSPACE_API_KEY, or run as a user that can read ${path}`,
    });
  }
}
