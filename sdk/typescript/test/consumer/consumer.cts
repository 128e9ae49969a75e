// The same package through require (the "require" condition: dist/cjs).
import nullspace = require("nullspace");

export async function main(): Promise<string> {
  const m = await nullspace.Machine.create({ template: "base" });
  const r: nullspace.CommandResult = await m.commands.run("echo cjs");
  await m.kill();
  return r.stdout;
}
