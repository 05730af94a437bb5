package daemon

import (
	"fmt"
	"strings"

	"github.com/redis/go-redis/v9"
)

// Cluster URL schemes: the hosts of a redis+cluster:// URL are the seed
// nodes, comma-separated.
const (
	clusterScheme    = "redis+cluster://"
	clusterTLSScheme = "rediss+cluster://"
)

// IsCluster reports whether c names a Redis Cluster: seed nodes in Cluster,
// or a redis+cluster:// (rediss+cluster://) URL in Addr.
func (c RedisConfig) IsCluster() bool {
	return len(c.Cluster) > 0 || isClusterURL(c.Addr)
}

func isClusterURL(addr string) bool {
	return strings.HasPrefix(addr, clusterScheme) || strings.HasPrefix(addr, clusterTLSScheme)
}

// ClusterOptions returns the go-redis options of the Redis Cluster c names,
// with the same settings per node as Options gives a standalone Redis.
func (c RedisConfig) ClusterOptions() (*redis.ClusterOptions, error) {
	opt := &redis.ClusterOptions{Addrs: c.Cluster}
	if isClusterURL(c.Addr) {
		u, err := clusterURL(c.Addr)
		if err != nil {
			return nil, err
		}
		if opt, err = redis.ParseClusterURL(u); err != nil {
			return nil, fmt.Errorf("redis.addr: %w", err)
		}
	}
	if len(opt.Addrs) == 0 {
		return nil, fmt.Errorf("redis.cluster: no seed node given")
	}
	if c.DB != 0 {
		return nil, fmt.Errorf("redis.db: a Redis Cluster has only database 0")
	}
	if c.Username != "" {
		opt.Username = c.Username
	}
	if c.Password != "" {
		opt.Password = c.Password
	}
	opt.DialTimeout = c.DialTimeout
	opt.ReadTimeout = c.ReadTimeout
	opt.WriteTimeout = c.WriteTimeout
	if c.TLS.Enabled || opt.TLSConfig != nil {
		tc, err := c.TLS.config("")
		if err != nil {
			return nil, err
		}
		opt.TLSConfig = tc
	}
	// As for a standalone Redis (see Options): deadlines cut socket I/O,
	// and nudge does its own bounded retries. A MOVED or ASK that a plain
	// read meets during a reshard is still followed, up to 8 times.
	opt.ContextTimeoutEnabled = true
	opt.MaxRetries = -1
	opt.MaxRedirects = 8
	opt.PoolSize = max(c.PoolSize, opt.PoolSize, 64)
	return opt, nil
}

// clusterURL rewrites a redis+cluster://user:pass@h1:p1,h2:p2/?opts URL
// into the form redis.ParseClusterURL reads:
// redis://user:pass@h1:p1?opts&addr=h2:p2.
func clusterURL(addr string) (string, error) {
	scheme, rest, _ := strings.Cut(addr, "://")
	scheme = strings.TrimSuffix(scheme, "+cluster")
	end := len(rest)
	if i := strings.IndexAny(rest, "/?"); i >= 0 {
		end = i
	}
	authority, tail := rest[:end], rest[end:]
	userinfo, hosts := "", authority
	if i := strings.LastIndex(authority, "@"); i >= 0 {
		userinfo, hosts = authority[:i+1], authority[i+1:]
	}
	seeds := strings.Split(hosts, ",")
	for _, h := range seeds {
		if h == "" {
			return "", fmt.Errorf("redis.addr: %s URL with an empty seed node", scheme+"+cluster://")
		}
	}
	path, query, _ := strings.Cut(tail, "?")
	if path != "" && path != "/" && path != "/0" {
		return "", fmt.Errorf("redis.addr: a Redis Cluster has only database 0, not %q", strings.TrimPrefix(path, "/"))
	}
	var extra []string
	if query != "" {
		extra = append(extra, query)
	}
	for _, h := range seeds[1:] {
		extra = append(extra, "addr="+h)
	}
	u := scheme + "://" + userinfo + seeds[0]
	if len(extra) > 0 {
		u += "?" + strings.Join(extra, "&")
	}
	return u, nil
}
