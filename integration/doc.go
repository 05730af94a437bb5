// Package integration holds nudge's end-to-end tests: the real gRPC server
// on a loopback port, in front of a real redis-server started by the tests
// (internal/redistest), and the built nudged binary. It has no non-test
// code beyond this comment.
package integration
