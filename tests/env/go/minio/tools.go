//go:build tools

// Package tools pins the MinIO server command for `go mod tidy`.
package tools

import _ "github.com/minio/minio"
