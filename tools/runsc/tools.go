//go:build tools

// Package runsc pins the gVisor runsc version the project builds and tests with.
package runsc

import _ "gvisor.dev/gvisor/runsc"
