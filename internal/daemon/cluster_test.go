package daemon

import (
	"slices"
	"strings"
	"testing"
	"time"
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
