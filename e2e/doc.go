// Package e2e holds the end-to-end tests: a real `nullspace serve` in the
// test process, real gVisor machines, real network namespaces and cgroups,
// driven through the public Go client and CLI. They need root and runsc and
// fail, rather than skip, when either is missing.
package e2e
