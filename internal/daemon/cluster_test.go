package daemon

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nudge-dm/nudge/internal/redistest"
)

func TestClusterOptions(t *testing.T) {
	for _, tc := range []struct {
		name      string
		cfg       RedisConfig
		wantAddrs []string
		wantUser  string
		wantPass  string
		wantTLS   bool
		wantDial  time.Duration
	}{
		{
			name:      "seed list",
			cfg:       RedisConfig{Cluster: []string{"127.0.0.1:7000", "127.0.0.1:7001"}, Username: "u", Password: "p"},
			wantAddrs: []string{"127.0.0.1:7000", "127.0.0.1:7001"}, wantUser: "u", wantPass: "p",
		},
		{
			name:      "url with seeds and credentials",
			cfg:       RedisConfig{Addr: "redis+cluster://nudge:s3cret@10.0.0.1:7000,10.0.0.2:7000,10.0.0.3:7000"},
			wantAddrs: []string{"10.0.0.1:7000", "10.0.0.2:7000", "10.0.0.3:7000"}, wantUser: "nudge", wantPass: "s3cret",
		},
		{
			name:      "url with options and a trailing slash",
			cfg:       RedisConfig{Addr: "redis+cluster://10.0.0.1:7000,10.0.0.2:7000/?dial_timeout=2s"},
			wantAddrs: []string{"10.0.0.1:7000", "10.0.0.2:7000"},
		},
		{
			name:      "tls url",
			cfg:       RedisConfig{Addr: "rediss+cluster://10.0.0.1:7000"},
			wantAddrs: []string{"10.0.0.1:7000"}, wantTLS: true,
		},
		{
			// As for redis:// URLs, the settings (which always carry their
			// defaults) give the timeouts.
			name:      "settings beat the url",
			cfg:       RedisConfig{Addr: "redis+cluster://a:b@10.0.0.1:7000?dial_timeout=9s", Password: "file-pass", DialTimeout: time.Second},
			wantAddrs: []string{"10.0.0.1:7000"}, wantUser: "a", wantPass: "file-pass", wantDial: time.Second,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if !tc.cfg.IsCluster() {
				t.Fatalf("IsCluster() = false for %+v", tc.cfg)
			}
			opt, err := tc.cfg.ClusterOptions()
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(opt.Addrs, tc.wantAddrs) {
				t.Errorf("Addrs = %v, want %v", opt.Addrs, tc.wantAddrs)
			}
			if opt.Username != tc.wantUser || opt.Password != tc.wantPass {
				t.Errorf("credentials = %q/%q, want %q/%q", opt.Username, opt.Password, tc.wantUser, tc.wantPass)
			}
			if (opt.TLSConfig != nil) != tc.wantTLS {
				t.Errorf("TLS = %v, want %v", opt.TLSConfig != nil, tc.wantTLS)
			}
			if tc.wantTLS && opt.TLSConfig.ServerName != "" {
				t.Errorf("TLS ServerName = %q: a cluster's nodes must each be verified under the host dialled", opt.TLSConfig.ServerName)
			}
			if tc.wantDial != 0 && opt.DialTimeout != tc.wantDial {
				t.Errorf("DialTimeout = %v, want %v", opt.DialTimeout, tc.wantDial)
			}
			if !opt.ContextTimeoutEnabled || opt.MaxRetries != -1 || opt.PoolSize < 64 {
				t.Errorf("ContextTimeoutEnabled %v, MaxRetries %d, PoolSize %d: want true, -1, >= 64", opt.ContextTimeoutEnabled, opt.MaxRetries, opt.PoolSize)
			}
		})
	}
}

func TestClusterOptionsRefuse(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  RedisConfig
		want string
	}{
		{"database in url", RedisConfig{Addr: "redis+cluster://10.0.0.1:7000/3"}, "only database 0"},
		{"empty seed", RedisConfig{Addr: "redis+cluster://10.0.0.1:7000,,10.0.0.2:7000"}, "empty seed node"},
		{"unknown option", RedisConfig{Addr: "redis+cluster://10.0.0.1:7000?colour=red"}, "colour"},
		{"db setting", RedisConfig{Cluster: []string{"10.0.0.1:7000"}, DB: 1}, "only database 0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tc.cfg.ClusterOptions()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("ClusterOptions() error = %v, want one containing %q", err, tc.want)
			}
		})
	}
	if (RedisConfig{Addr: "redis://10.0.0.1:6379"}).IsCluster() {
		t.Error("a redis:// URL is not a cluster")
	}
}

func TestResolveWaitReplicas(t *testing.T) {
	counts := func(m map[string]int) replicaCounter {
		return func(context.Context) (map[string]int, error) { return m, nil }
	}
	failing := func(context.Context) (map[string]int, error) { return nil, errors.New("NOPERM INFO") }
	replicated := counts(map[string]int{"a:1": 1, "b:1": 2, "c:1": 1})
	oneBare := counts(map[string]int{"a:1": 1, "b:1": 0, "c:1": 1})
	for _, tc := range []struct {
		name    string
		cfg     RedisConfig
		count   replicaCounter
		want    int
		wantErr string // in the error
		wantLog string // in the log
	}{
		{name: "auto, every master replicated", cfg: RedisConfig{Cluster: []string{"a:1"}}, count: replicated, want: 1, wantLog: "setting=auto"},
		{name: "auto spelled out", cfg: RedisConfig{Addr: "a:1", WaitReplicas: "auto"}, count: counts(map[string]int{"a:1": 1}), want: 1, wantLog: "wait_replicas=1"},
		{name: "auto, a master without replica", cfg: RedisConfig{Cluster: []string{"a:1"}}, count: oneBare, want: 0, wantLog: "masters_without_replica=b:1"},
		{name: "auto, standalone without replica", cfg: RedisConfig{Addr: "a:1"}, count: counts(map[string]int{"a:1": 0}), want: 0, wantLog: "level=WARN"},
		{name: "auto, cannot count", cfg: RedisConfig{Addr: "a:1"}, count: failing, wantErr: "set redis.wait_replicas to a number"},
		{name: "auto, embedded store", cfg: RedisConfig{}, count: failing, want: 0, wantLog: "embedded store has none"},
		{name: "explicit 0", cfg: RedisConfig{Addr: "a:1", WaitReplicas: "0"}, count: failing, want: 0, wantLog: "redis.wait_replicas 0"},
		{name: "explicit 2, enough", cfg: RedisConfig{Cluster: []string{"a:1"}, WaitReplicas: "2"}, count: counts(map[string]int{"a:1": 2}), want: 2, wantLog: "setting=explicit"},
		{name: "explicit 2, too few", cfg: RedisConfig{Cluster: []string{"a:1"}, WaitReplicas: "2"}, count: replicated, want: 2, wantLog: "answers UNAVAILABLE until enough replicas connect"},
		{name: "explicit 1, cannot count", cfg: RedisConfig{Addr: "a:1", WaitReplicas: "1"}, count: failing, want: 1, wantLog: "cannot count the replicas"},
		{name: "bad value", cfg: RedisConfig{Addr: "a:1", WaitReplicas: "x"}, count: replicated, wantErr: "redis.wait_replicas"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var logs bytes.Buffer
			log := slog.New(slog.NewTextHandler(&logs, nil))
			got, err := resolveWaitReplicas(t.Context(), tc.cfg, tc.count, log)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("resolveWaitReplicas = %d, %v; want %d", got, err, tc.want)
			}
			if !strings.Contains(logs.String(), tc.wantLog) {
				t.Errorf("log %q, want it to contain %q", logs.String(), tc.wantLog)
			}
		})
	}
}

// TestCountReplicas asks real servers: a master with a replica, one
// without, and a replica (which nudged must not write to).
func TestCountReplicas(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	master := redistest.Start(t, "--repl-diskless-sync-delay", "0")
	host, port, _ := net.SplitHostPort(master.Addr)
	replica := redistest.Start(t, "--replicaof", host, port)
	bare := redistest.Start(t)
	for {
		n, err := countReplicas(master.Client(t))(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if n[master.Addr] == 1 {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("the replica never connected: %v", n)
		case <-time.After(20 * time.Millisecond): // the replica connects in its own time
		}
	}
	n, err := countReplicas(bare.Client(t))(ctx)
	if err != nil || n[bare.Addr] != 0 || len(n) != 1 {
		t.Errorf("bare master: %v, %v; want 0 replicas", n, err)
	}
	got, err := resolveWaitReplicas(ctx, RedisConfig{Addr: master.Addr}, countReplicas(master.Client(t)), slog.New(slog.DiscardHandler))
	if err != nil || got != 1 {
		t.Errorf("auto with a replica: %d, %v; want 1", got, err)
	}
	if _, err := countReplicas(replica.Client(t))(ctx); err == nil || !strings.Contains(err.Error(), "not a master") {
		t.Errorf("counting on a replica: %v, want a refusal", err)
	}
}
