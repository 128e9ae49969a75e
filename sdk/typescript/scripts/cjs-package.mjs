// dist/cjs holds CommonJS files in a package whose "type" is "module":
// a package.json of its own tells Node to load them as CommonJS.
import { writeFileSync } from "node:fs";
writeFileSync(new URL("../dist/cjs/package.json", import.meta.url), JSON.stringify({ type: "commonjs" }) + "\n");
