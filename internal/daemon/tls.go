package daemon

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"time"
)

// certReloader serves the gRPC listener's TLS configuration from files and
// re-reads them when they change, so certificates rotate without a restart.
// The files are checked (stat) at each new connection: gRPC connections are
// long-lived, so this costs little. A change that does not load (a
// half-written file, a key that does not match) is logged and the previous
// configuration keeps serving.
type certReloader struct {
	cfg TLSConfig
	log *slog.Logger

	mu     sync.Mutex
	stamps []time.Time // modification times of the files loaded
	cur    *tls.Config
}

func newCertReloader(cfg TLSConfig, log *slog.Logger) (*certReloader, error) {
	r := &certReloader{cfg: cfg, log: log}
	stamps, err := r.modTimes()
	if err != nil {
		return nil, fmt.Errorf("tls: %w", err)
	}
	cur, err := r.load()
	if err != nil {
		return nil, fmt.Errorf("tls: %w", err)
	}
	r.cur, r.stamps = cur, stamps
	return r, nil
}

func (r *certReloader) files() []string {
	fs := []string{r.cfg.CertFile, r.cfg.KeyFile}
	if r.cfg.ClientCAFile != "" {
		fs = append(fs, r.cfg.ClientCAFile)
	}
	return fs
}

func (r *certReloader) modTimes() ([]time.Time, error) {
	var out []time.Time
	for _, f := range r.files() {
		st, err := os.Stat(f)
		if err != nil {
			return nil, err
		}
		out = append(out, st.ModTime())
	}
	return out, nil
}

// load reads the files into a server configuration.
func (r *certReloader) load() (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(r.cfg.CertFile, r.cfg.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("load %s and %s: %w", r.cfg.CertFile, r.cfg.KeyFile, err)
	}
	c := &tls.Config{
		MinVersion:   tls.VersionTLS12,
		Certificates: []tls.Certificate{cert},
		NextProtos:   []string{"h2"},
	}
	if r.cfg.ClientCAFile != "" {
		pool, err := loadPool(r.cfg.ClientCAFile)
		if err != nil {
			return nil, err
		}
		c.ClientCAs = pool
		c.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return c, nil
}

// serverConfig returns the configuration to give the listener: it picks
// the current files' configuration for each connection.
func (r *certReloader) serverConfig() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		NextProtos: []string{"h2"},
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			return r.current(), nil
		},
	}
}

// httpConfig is serverConfig for the HTTP listener, which also speaks
// HTTP/1.1 (gRPC-Web and Connect clients without HTTP/2).
func (r *certReloader) httpConfig() *tls.Config {
	protos := []string{"h2", "http/1.1"}
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		NextProtos: protos,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			c := r.current().Clone()
			c.NextProtos = protos
			return c, nil
		},
	}
}

// current reloads the files if they changed and returns the configuration
// in force.
func (r *certReloader) current() *tls.Config {
	r.mu.Lock()
	defer r.mu.Unlock()
	stamps, err := r.modTimes()
	if err != nil || equalTimes(stamps, r.stamps) {
		return r.cur // a file missing for a moment (a rename): keep serving
	}
	next, err := r.load()
	if err != nil {
		r.log.Error("TLS files changed but do not load; the previous certificate keeps serving", "err", err)
		r.stamps = stamps // do not retry (and log) at every connection until they change again
		return r.cur
	}
	r.cur, r.stamps = next, stamps
	r.log.Info("TLS certificate reloaded", "cert", r.cfg.CertFile, "mutual", r.cfg.ClientCAFile != "")
	return r.cur
}

func equalTimes(a, b []time.Time) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !a[i].Equal(b[i]) {
			return false
		}
	}
	return true
}

// loadPool reads a PEM bundle of CA certificates.
func loadPool(path string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s: no PEM certificate found", path)
	}
	return pool, nil
}

// config returns the TLS configuration towards Redis at addr.
func (c ClientTLSConfig) config(addr string) (*tls.Config, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: c.ServerName}
	// An empty addr (a cluster's many nodes) leaves the name to the dialer,
	// which verifies each node under the host it dials.
	if tc.ServerName == "" && addr != "" {
		host, _, err := net.SplitHostPort(addr)
		if err != nil {
			return nil, fmt.Errorf("redis.tls: server name of %q: %w", addr, err)
		}
		tc.ServerName = host
	}
	if c.CAFile != "" {
		pool, err := loadPool(c.CAFile)
		if err != nil {
			return nil, fmt.Errorf("redis.tls.ca_file: %w", err)
		}
		tc.RootCAs = pool
	}
	if c.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("redis.tls: %w", err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	return tc, nil
}
