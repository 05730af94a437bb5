package redistest

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
)

// TLS is the TLS setup of a server started by StartTLS. Every file is PEM.
type TLS struct {
	// CertFile and KeyFile are the server's certificate and key. For
	// clients that dial 127.0.0.1 the certificate needs that IP address
	// among its subject alternative names.
	CertFile, KeyFile string
	// CAFile is the CA that signed the server certificate (the harness's
	// own clients trust it) and the one Redis verifies client certificates
	// with. Redis refuses to start TLS without one.
	CAFile string
	// AuthClients is Redis's tls-auth-clients: "yes" (client certificates
	// required), "no" or "optional". Default (empty): Redis's own, "yes".
	AuthClients string
	// ClientCertFile and ClientKeyFile are the certificate the harness's
	// own clients present (PING at start, Client); needed when AuthClients
	// is "yes", ignored when empty.
	ClientCertFile, ClientKeyFile string
}

// StartTLS starts redis-server on a free loopback port that speaks TLS only
// (--port 0 --tls-port P; Server.Addr is that port) with persistence off,
// plus extra arguments, and stops it when the test ends. Server.Client
// connects with TLS.
func StartTLS(tb testing.TB, cfg TLS, extra ...string) *Server {
	tb.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		tb.Fatalf("redis-server not found on PATH: install the Debian package redis-server (make test does this when it can): %v", err)
	}
	clientTLS, err := cfg.clientConfig()
	if err != nil {
		tb.Fatalf("redistest: TLS files: %v", err)
	}
	dir := tb.TempDir()
	port := freePort(tb)
	args := []string{
		"--port", "0", "--tls-port", strconv.Itoa(port), "--bind", "127.0.0.1",
		"--tls-cert-file", cfg.CertFile, "--tls-key-file", cfg.KeyFile,
		"--tls-ca-cert-file", cfg.CAFile,
		"--save", "", "--appendonly", "no", "--dir", dir,
		"--logfile", filepath.Join(dir, "redis.log"),
	}
	if cfg.AuthClients != "" {
		args = append(args, "--tls-auth-clients", cfg.AuthClients)
	}
	args = append(args, extra...)
	s := &Server{
		Addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)),
		Dir:  dir,
		args: append([]string{bin}, args...),
		tls:  clientTLS,
	}
	tb.Cleanup(s.Stop)
	s.start(tb)
	return s
}

// clientConfig is the TLS configuration of the harness's own clients.
func (c TLS) clientConfig() (*tls.Config, error) {
	ca, err := os.ReadFile(c.CAFile)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(ca) {
		return nil, fmt.Errorf("%s: no PEM certificate found", c.CAFile)
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: pool, ServerName: "127.0.0.1"}
	if c.ClientCertFile != "" {
		cert, err := tls.LoadX509KeyPair(c.ClientCertFile, c.ClientKeyFile)
		if err != nil {
			return nil, err
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	return tc, nil
}
