package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

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

// replicaCounter is what resolveWaitReplicas asks of Redis: the replicas
// connected to each master, by address.
type replicaCounter func(ctx context.Context) (map[string]int, error)

// countReplicas returns a replicaCounter over rdb: INFO replication on the
// standalone server, or on every master of a cluster.
func countReplicas(rdb redis.UniversalClient) replicaCounter {
	one := func(ctx context.Context, c *redis.Client, out map[string]int, mu *sync.Mutex) error {
		info, err := c.Info(ctx, "replication").Result()
		if err != nil {
			return fmt.Errorf("INFO replication on %s: %w", c.Options().Addr, err)
		}
		role, n := "", 0
		for _, line := range strings.Split(info, "\n") {
			k, v, _ := strings.Cut(strings.TrimSpace(line), ":")
			switch k {
			case "role":
				role = v
			case "connected_slaves":
				n, _ = strconv.Atoi(v)
			}
		}
		if role != "master" {
			return fmt.Errorf("%s is a %q, not a master: nudged must write to masters", c.Options().Addr, role)
		}
		mu.Lock()
		out[c.Options().Addr] = n
		mu.Unlock()
		return nil
	}
	return func(ctx context.Context) (map[string]int, error) {
		out := map[string]int{}
		var mu sync.Mutex
		switch c := rdb.(type) {
		case *redis.ClusterClient:
			err := c.ForEachMaster(ctx, func(ctx context.Context, m *redis.Client) error { return one(ctx, m, out, &mu) })
			return out, err
		case *redis.Client:
			return out, one(ctx, c, out, &mu)
		}
		return nil, fmt.Errorf("unsupported Redis client %T", rdb)
	}
}

// resolveWaitReplicas decides how many replicas each ingest write waits for
// (redisstore.Options.WaitReplicas), once, at start-up, and logs the choice:
// an explicit number as it is (with a warning when some master has fewer
// replicas now: its slots' ingest answers UNAVAILABLE until they connect);
// auto as 1 when every master has at least one replica, else 0 with a
// warning (and 0 for the embedded store). auto is an error when the
// replicas cannot be counted (e.g. an ACL denying INFO): guessing 0 would
// be unsafe and 1 could refuse every write, so the operator must say.
func resolveWaitReplicas(ctx context.Context, c RedisConfig, count replicaCounter, log *slog.Logger) (int, error) {
	n, auto, err := c.waitReplicas()
	if err != nil {
		return 0, err
	}
	timeout := c.WaitTimeout
	if timeout <= 0 {
		timeout = Defaults().Redis.WaitTimeout
	}
	embedded := c.Addr == "" && !c.IsCluster()
	switch {
	case embedded:
		log.Info("ingest acknowledges without waiting for replicas: the embedded store has none", "wait_replicas", 0)
		return 0, nil
	case !auto && n == 0:
		log.Warn("ingest acknowledges without waiting for replicas (redis.wait_replicas 0): "+
			"events acknowledged just before a master fails can be missing from the replica that replaces it", "wait_replicas", 0)
		return 0, nil
	}
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	replicas, cerr := count(pctx)
	fewest, short := -1, []string(nil)
	for addr, r := range replicas {
		if fewest < 0 || r < fewest {
			fewest = r
		}
		if r < max(n, 1) {
			short = append(short, addr)
		}
	}
	sort.Strings(short)
	if auto {
		if cerr != nil {
			return 0, fmt.Errorf("redis.wait_replicas auto: cannot count the replicas: %w; set redis.wait_replicas to a number (0 turns WAIT off)", cerr)
		}
		if len(short) > 0 {
			log.Warn("ingest acknowledges without waiting for replicas (redis.wait_replicas auto): some masters have none, "+
				"so an acknowledged event survives only their own persistence; with a replica per master and a restart, nudged waits for 1",
				"wait_replicas", 0, "masters", len(replicas), "masters_without_replica", strings.Join(short, ","))
			return 0, nil
		}
		n = 1
	}
	switch {
	case cerr != nil:
		log.Warn("cannot count the replicas; waiting as configured", "wait_replicas", n, "err", cerr)
	case len(short) > 0:
		log.Warn("some masters have fewer replicas than redis.wait_replicas: ingest of their slots answers UNAVAILABLE until enough replicas connect",
			"wait_replicas", n, "masters", strings.Join(short, ","))
	}
	setting := "explicit"
	if auto {
		setting = WaitReplicasAuto
	}
	log.Info("ingest acknowledges after replication (WAIT)", "wait_replicas", n, "wait_timeout", timeout,
		"setting", setting, "masters", len(replicas), "fewest_replicas", fewest)
	return n, nil
}
