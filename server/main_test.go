package server_test

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the run when goroutines outlive the tests: every server,
// client connection, stream worker and store a test starts must be stopped
// by the test that started it (STYLE.md rule 7). No goroutine of grpc,
// go-redis or miniredis needs to be ignored: all of them end when their
// owner is closed.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
