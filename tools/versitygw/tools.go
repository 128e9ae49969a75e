//go:build tools

// Package versitygw pins the versitygw version the tests use as their
// S3-compatible server (Apache-2.0; MinIO's server is AGPL and is never
// used). It is built as a tool and never linked into nullspace.
package versitygw

import _ "github.com/versity/versitygw/cmd/versitygw"
