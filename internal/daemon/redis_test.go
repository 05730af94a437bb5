package daemon

import (
	"cmp"
	"context"
	"crypto/x509"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/nudge-dm/nudge/internal/certtest"
	"github.com/nudge-dm/nudge/internal/redistest"
	nudgev1 "github.com/nudge-dm/nudge/proto/nudge/v1"
)

// The ACL set-up of the servers below: the default user needs
// adminPassword (so a client that fails to authenticate as aclUser cannot
// fall back on it), and aclUser may do everything.
const (
	adminPassword = "admin-pw"
	aclUser       = "nudge"
	aclPassword   = "nudge-pw"
)

// withACLUser creates aclUser on s, started with --requirepass
// adminPassword, and returns a client of the default user.
func withACLUser(t *testing.T, s *redistest.Server) *redis.Client {
	t.Helper()
	admin := clientWithPassword(t, s, adminPassword)
	err := admin.Do(t.Context(), "ACL", "SETUSER", aclUser, "on", ">"+aclPassword, "~*", "&*", "+@all").Err()
	if err != nil {
		t.Fatalf("ACL SETUSER: %v", err)
	}
	return admin
}

// clientWithPassword returns a client of s's default user, closed when the
// test ends.
func clientWithPassword(t *testing.T, s *redistest.Server, password string) *redis.Client {
	t.Helper()
	o := s.ClientOptions()
	o.Password = password
	c := redis.NewClient(o)
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// redisTLSFiles are PEM files for a Redis with TLS, made up for a test.
type redisTLSFiles struct {
	ca, cert, key         string // the CA; Redis's certificate (IP 127.0.0.1) and key
	clientCert, clientKey string // a client certificate from the same CA
	otherCA               string // a CA that signed neither
}

func newRedisTLSFiles(t *testing.T) redisTLSFiles {
	t.Helper()
	ca, other := certtest.NewCA(t, "redis CA"), certtest.NewCA(t, "other CA")
	dir := t.TempDir()
	f := redisTLSFiles{
		ca: filepath.Join(dir, "ca.pem"), otherCA: filepath.Join(dir, "other-ca.pem"),
		cert: filepath.Join(dir, "redis.pem"), key: filepath.Join(dir, "redis-key.pem"),
		clientCert: filepath.Join(dir, "client.pem"), clientKey: filepath.Join(dir, "client-key.pem"),
	}
	sc, sk, _ := ca.Issue(t, "redis", x509.ExtKeyUsageServerAuth)
	cc, ck, _ := ca.Issue(t, "nudged", x509.ExtKeyUsageClientAuth)
	for path, b := range map[string][]byte{
		f.ca: ca.PEM, f.otherCA: other.PEM, f.cert: sc, f.key: sk, f.clientCert: cc, f.clientKey: ck,
	} {
		certtest.WriteFile(t, path, b)
	}
	return f
}

// startTLSRedis starts a TLS-only redis-server with f's certificate that
// asks clients for certificates as authClients says.
func (f redisTLSFiles) startTLSRedis(t *testing.T, authClients string, extra ...string) *redistest.Server {
	t.Helper()
	return redistest.StartTLS(t, redistest.TLS{
		CertFile: f.cert, KeyFile: f.key, CAFile: f.ca, AuthClients: authClients,
		ClientCertFile: f.clientCert, ClientKeyFile: f.clientKey,
	}, extra...)
}

// nudgedConfig is the default configuration with rc as its Redis settings
// (the pool size and timeouts keep their defaults when rc leaves them
// zero).
func nudgedConfig(rc RedisConfig) Config {
	cfg := Defaults()
	rc.PoolSize = cmp.Or(rc.PoolSize, cfg.Redis.PoolSize)
	rc.DialTimeout = cmp.Or(rc.DialTimeout, cfg.Redis.DialTimeout)
	rc.ReadTimeout = cmp.Or(rc.ReadTimeout, cfg.Redis.ReadTimeout)
	rc.WriteTimeout = cmp.Or(rc.WriteTimeout, cfg.Redis.WriteTimeout)
	cfg.Redis = rc
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	return cfg
}

// checkServesFrom publishes a view event through nudged at addr and asks
// for a decision on its user: the event must be applied, the decision made
// on the profile it wrote (not degraded, profile version at least 1), and
// the data must be in the Redis behind rdb: nudged really talks to it.
func checkServesFrom(t *testing.T, addr string, rdb *redis.Client) {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()

	pub, err := nudgev1.NewIngestServiceClient(conn).Publish(ctx, &nudgev1.PublishRequest{Events: []*nudgev1.Event{
		{EventId: "e1", UserId: "u1", Type: "view", Category: "phones", OccurredAt: timestamppb.Now()},
	}})
	if err != nil {
		t.Fatalf("Publish: %v", err)
	}
	if rs := pub.GetResults(); len(rs) != 1 || rs[0].GetStatus() != nudgev1.EventStatus_EVENT_STATUS_APPLIED {
		t.Fatalf("Publish results = %v, want one APPLIED", rs)
	}
	// A generous budget: the point is where the profile comes from, not
	// how fast a noisy machine reads it.
	dec, err := nudgev1.NewDecisionServiceClient(conn).GetDecision(ctx, &nudgev1.GetDecisionRequest{
		UserId: "u1", Channel: "sms", Budget: durationpb.New(time.Second),
	})
	if err != nil {
		t.Fatalf("GetDecision: %v", err)
	}
	if dec.GetDecision().GetDegraded() || dec.GetProfileVersion() == 0 {
		t.Fatalf("GetDecision: degraded %v, profile version %d; want a decision on the profile just written",
			dec.GetDecision().GetDegraded(), dec.GetProfileVersion())
	}
	if n, err := rdb.DBSize(ctx).Result(); err != nil || n == 0 {
		t.Fatalf("DBSIZE of the test's Redis = %d, %v; want the profile nudged wrote", n, err)
	}
}

// runUntilError runs nudged with cfg, which must fail at start: it returns
// Run's error, and fails the test if Run served or ran into the deadline
// instead of failing fast.
func runUntilError(t *testing.T, cfg Config) error {
	t.Helper()
	cfg.Listen = "127.0.0.1:0"
	ctx, cancel := context.WithTimeout(t.Context(), 8*time.Second)
	defer cancel()
	served := false
	err := Run(ctx, cfg, func(net.Addr) { served = true; cancel() })
	switch {
	case served:
		t.Fatalf("Run served (err %v); want it to refuse to start", err)
	case err == nil:
		t.Fatal("Run returned nil; want an error")
	case errors.Is(err, context.DeadlineExceeded) || ctx.Err() != nil:
		t.Fatalf("Run hung until a deadline: %v", err)
	}
	t.Logf("Run: %v", err)
	return err
}

// Every way of reaching and authenticating to Redis that the configuration
// offers works against a real redis-server set up that way.
func TestRunWithRedisAuthAndTLS(t *testing.T) {
	files := newRedisTLSFiles(t)
	for _, tc := range []struct {
		name string
		// redis starts the server and returns the configuration that
		// reaches it, and a client to inspect it with.
		redis func(t *testing.T) (RedisConfig, *redis.Client)
	}{
		{"ACL user and password", func(t *testing.T) (RedisConfig, *redis.Client) {
			s := redistest.Start(t, "--requirepass", adminPassword)
			return RedisConfig{Addr: s.Addr, Username: aclUser, Password: aclPassword}, withACLUser(t, s)
		}},
		{"ACL user and password file", func(t *testing.T) (RedisConfig, *redis.Client) {
			s := redistest.Start(t, "--requirepass", adminPassword)
			pw := writeFile(t, "redis-password", aclPassword+"\n")
			return RedisConfig{Addr: s.Addr, Username: aclUser, PasswordFile: pw}, withACLUser(t, s)
		}},
		{"ACL user in a redis:// URL", func(t *testing.T) (RedisConfig, *redis.Client) {
			s := redistest.Start(t, "--requirepass", adminPassword)
			return RedisConfig{Addr: "redis://" + aclUser + ":" + aclPassword + "@" + s.Addr}, withACLUser(t, s)
		}},
		{"requirepass and password only", func(t *testing.T) (RedisConfig, *redis.Client) {
			s := redistest.Start(t, "--requirepass", "only-pw")
			return RedisConfig{Addr: s.Addr, Password: "only-pw"}, clientWithPassword(t, s, "only-pw")
		}},
		{"TLS enabled with a CA file", func(t *testing.T) (RedisConfig, *redis.Client) {
			s := files.startTLSRedis(t, "no")
			return RedisConfig{Addr: s.Addr, TLS: ClientTLSConfig{Enabled: true, CAFile: files.ca}}, s.Client(t)
		}},
		{"TLS with server name 127.0.0.1 given", func(t *testing.T) (RedisConfig, *redis.Client) {
			s := files.startTLSRedis(t, "no")
			return RedisConfig{Addr: s.Addr, TLS: ClientTLSConfig{Enabled: true, CAFile: files.ca, ServerName: "127.0.0.1"}}, s.Client(t)
		}},
		{"rediss:// URL with a CA file", func(t *testing.T) (RedisConfig, *redis.Client) {
			s := files.startTLSRedis(t, "no")
			return RedisConfig{Addr: "rediss://" + s.Addr, TLS: ClientTLSConfig{CAFile: files.ca}}, s.Client(t)
		}},
		{"mutual TLS", func(t *testing.T) (RedisConfig, *redis.Client) {
			s := files.startTLSRedis(t, "yes")
			return RedisConfig{Addr: s.Addr, TLS: ClientTLSConfig{
				Enabled: true, CAFile: files.ca, CertFile: files.clientCert, KeyFile: files.clientKey,
			}}, s.Client(t)
		}},
		{"mutual TLS and ACL user in a rediss:// URL", func(t *testing.T) (RedisConfig, *redis.Client) {
			s := files.startTLSRedis(t, "yes", "--requirepass", adminPassword)
			return RedisConfig{
				Addr: "rediss://" + aclUser + ":" + aclPassword + "@" + s.Addr,
				TLS:  ClientTLSConfig{CAFile: files.ca, CertFile: files.clientCert, KeyFile: files.clientKey},
			}, withACLUser(t, s)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rc, rdb := tc.redis(t)
			addr := startDaemon(t, nudgedConfig(rc))
			checkServesFrom(t, addr, rdb)
		})
	}
}

// A Redis that refuses nudged's credentials or certificates stops nudged
// at once, with an error that names the cause.
func TestRunFailsFastWhenRedisRefuses(t *testing.T) {
	files := newRedisTLSFiles(t)
	acl := redistest.Start(t, "--requirepass", adminPassword)
	withACLUser(t, acl)
	tlsOnly := files.startTLSRedis(t, "no")
	mutual := files.startTLSRedis(t, "yes")

	authError := func(code string) func(t *testing.T, err error) {
		return func(t *testing.T, err error) {
			t.Helper()
			if !redis.IsAuthError(err) || !strings.Contains(err.Error(), code) {
				t.Errorf("err = %v, want a Redis authentication error naming %s", err, code)
			}
		}
	}
	for _, tc := range []struct {
		name  string
		redis RedisConfig
		check func(t *testing.T, err error)
	}{
		{"wrong password", RedisConfig{Addr: acl.Addr, Username: aclUser, Password: "not-the-pw"}, authError("WRONGPASS")},
		{"unknown user", RedisConfig{Addr: acl.Addr, Username: "nobody", Password: aclPassword}, authError("WRONGPASS")},
		{"wrong password in a URL", RedisConfig{Addr: "redis://" + aclUser + ":nope@" + acl.Addr}, authError("WRONGPASS")},
		{"no password", RedisConfig{Addr: acl.Addr}, authError("NOAUTH")},
		{"server certificate from an unknown CA", RedisConfig{Addr: tlsOnly.Addr, TLS: ClientTLSConfig{Enabled: true, CAFile: files.otherCA}},
			func(t *testing.T, err error) {
				t.Helper()
				var unknown x509.UnknownAuthorityError
				if !errors.As(err, &unknown) {
					t.Errorf("err = %v, want an x509.UnknownAuthorityError", err)
				}
			}},
		{"server certificate not for the server name", RedisConfig{Addr: tlsOnly.Addr, TLS: ClientTLSConfig{Enabled: true, CAFile: files.ca, ServerName: "redis.example"}},
			func(t *testing.T, err error) {
				t.Helper()
				var host x509.HostnameError
				if !errors.As(err, &host) {
					t.Errorf("err = %v, want an x509.HostnameError", err)
				}
			}},
		{"no client certificate for mutual TLS", RedisConfig{Addr: mutual.Addr, TLS: ClientTLSConfig{Enabled: true, CAFile: files.ca}},
			func(t *testing.T, err error) {
				t.Helper()
				// In TLS 1.3 the client's handshake ends before Redis
				// checks its certificate: the client reads the alert
				// "certificate required", unless its first write meets
				// the closed connection first (reset by peer, EOF). Either
				// way Run fails at once, naming where it was going.
				if !strings.Contains(err.Error(), "certificate required") &&
					!(strings.Contains(err.Error(), "cannot reach Redis at "+mutual.Addr) &&
						(errors.Is(err, syscall.ECONNRESET) || errors.Is(err, io.EOF) || errors.Is(err, syscall.EPIPE))) {
					t.Errorf("err = %v, want the TLS alert certificate required (or the connection closed by it)", err)
				}
			}},
		{"plaintext to a TLS-only Redis", RedisConfig{Addr: tlsOnly.Addr},
			func(t *testing.T, err error) {
				t.Helper()
				// Redis drops a connection that does not start with a
				// TLS handshake: all the client sees is EOF. What counts
				// is that Run fails at once (runUntilError) and says
				// where it was going.
				if !strings.Contains(err.Error(), "cannot reach Redis at "+tlsOnly.Addr) {
					t.Errorf("err = %v, want it to name the Redis address", err)
				}
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := runUntilError(t, nudgedConfig(tc.redis))
			tc.check(t, err)
		})
	}
}

// TestStoreHealthFollowsRedis: the probe reports Redis unreachable after
// probeFailures failed pings, and reachable again after one that succeeds;
// /readyz follows.
func TestStoreHealthFollowsRedis(t *testing.T) {
	rs := redistest.Start(t)
	rdb := rs.Client(t)
	changes := make(chan bool, 4)
	h := newStoreHealth(rdb, func(ok bool) { changes <- ok }, slog.New(slog.NewTextHandler(io.Discard, nil)))
	h.interval = 20 * time.Millisecond
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- h.run(ctx) }()
	defer func() {
		cancel()
		<-done
	}()
	next := func(want bool) {
		t.Helper()
		select {
		case got := <-changes:
			if got != want {
				t.Fatalf("reachable = %v, want %v", got, want)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("no report of reachable = %v within 10s", want)
		}
	}
	ready := func() int {
		rec := httptest.NewRecorder()
		h.readyz(rec, httptest.NewRequest(http.MethodGet, "/readyz", nil))
		return rec.Code
	}
	if code := ready(); code != http.StatusOK {
		t.Fatalf("/readyz = %d with Redis up", code)
	}
	rs.Stop()
	next(false)
	if code := ready(); code != http.StatusServiceUnavailable {
		t.Errorf("/readyz = %d with Redis down, want 503", code)
	}
	rs.Restart(t)
	next(true)
	if code := ready(); code != http.StatusOK {
		t.Errorf("/readyz = %d with Redis back", code)
	}
}
