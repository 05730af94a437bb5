// Package redistest starts real redis-server processes on free loopback
// ports for tests. A missing redis-server fails the test with the package to
// install; it never skips.
package redistest

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// Server is a redis-server process owned by a test.
type Server struct {
	Addr string
	Dir  string
	cmd  *exec.Cmd
	args []string
	// tls is how the harness's own clients reach a TLS-only server (see
	// StartTLS); nil for plaintext.
	tls *tls.Config
}

// Start starts redis-server on a free loopback port with persistence off
// (plus extra arguments, e.g. "--appendonly", "yes"), and stops it when the
// test ends.
func Start(tb testing.TB, extra ...string) *Server {
	tb.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		tb.Fatalf("redis-server not found on PATH: install the Debian package redis-server (make test does this when it can): %v", err)
	}
	dir := tb.TempDir()
	port := freePort(tb)
	args := []string{
		"--port", strconv.Itoa(port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", dir,
		"--logfile", filepath.Join(dir, "redis.log"),
	}
	args = append(args, extra...)
	s := &Server{Addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), Dir: dir, args: append([]string{bin}, args...)}
	// Registered before starting: a server that starts but never answers
	// fails the test in start, and must still be stopped.
	tb.Cleanup(s.Stop)
	s.start(tb)
	return s
}

func (s *Server) start(tb testing.TB) {
	tb.Helper()
	s.cmd = exec.Command(s.args[0], s.args[1:]...)
	if err := s.cmd.Start(); err != nil {
		tb.Fatalf("start redis-server: %v", err)
	}
	if err := waitReady(s.ClientOptions(), 10*time.Second); err != nil {
		log, _ := os.ReadFile(filepath.Join(s.Dir, "redis.log"))
		tb.Fatalf("redis-server on %s did not come up: %v\n%s", s.Addr, err, log)
	}
}

// Restart starts the server again after Stop (or a crash), with the same
// port, arguments and directory: with AOF on, it reloads what was synced.
func (s *Server) Restart(tb testing.TB) {
	tb.Helper()
	s.Stop()
	s.start(tb)
}

// Stop kills the server (SIGKILL) and waits for it to exit.
func (s *Server) Stop() {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	_ = s.cmd.Process.Kill()
	_ = s.cmd.Wait()
	s.cmd = nil
}

// Client returns a go-redis client for the server, closed when the test
// ends.
func (s *Server) Client(tb testing.TB) *redis.Client {
	tb.Helper()
	c := redis.NewClient(s.ClientOptions())
	tb.Cleanup(func() { _ = c.Close() })
	return c
}

// ClientOptions returns new go-redis options that reach the server as
// Client does (with TLS for a server from StartTLS), for a test that
// needs to change them, e.g. to authenticate.
func (s *Server) ClientOptions() *redis.Options {
	o := &redis.Options{Addr: s.Addr}
	if s.tls != nil {
		o.TLSConfig = s.tls.Clone()
	}
	return o
}

func freePort(tb testing.TB) int {
	tb.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatalf("find a free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// waitReady polls PING until it answers or the timeout passes. A refusal
// to authenticate is an answer too: the server is up and wants a password
// (e.g. --requirepass) the harness was not given.
func waitReady(opt *redis.Options, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	opt.MaxRetries = -1
	c := redis.NewClient(opt)
	defer c.Close()
	var err error
	for ctx.Err() == nil {
		if err = c.Ping(ctx).Err(); err == nil || redis.IsAuthError(err) {
			return nil
		}
		select {
		case <-ctx.Done():
		case <-time.After(20 * time.Millisecond):
		}
	}
	return fmt.Errorf("no PING answer in %v: %w", timeout, err)
}
