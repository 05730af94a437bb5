package redisstore

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// ErrTrackingUnsupported is Track's error when Redis does not offer
// client tracking (Redis before 6, or the embedded development store): the
// near-cache then stays off and every read goes to Redis.
var ErrTrackingUnsupported = errors.New("redis: client tracking is not supported, so the near-cache stays off")

// Track keeps the near-cache coherent (nearcache.go) until ctx ends: it
// holds one tracking connection to every master (RESP3, CLIENT TRACKING ON
// BCAST with the prefix of nudge's keys), sends each a PING
// every Heartbeat, and applies the invalidations Redis pushes. On a Redis
// Cluster it lists the masters every Topology and tracks the new ones. A
// connection that breaks, or stays silent past MaxSilence, is replaced;
// until every master is tracked again the cache is empty and bypassed.
//
// Without a near-cache (Options.NearCache.MaxBytes 0) Track returns nil at
// once, as it does when ctx ends. When Redis does not offer tracking it
// returns ErrTrackingUnsupported, and the cache stays off.
func (s *Store) Track(ctx context.Context) error {
	if s.near == nil {
		return nil
	}
	t := &tracker{s: s, c: s.near, o: s.opt.NearCache, nodes: make(map[string]*trackedNode)}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	defer t.wg.Wait()
	if s.cluster == nil {
		c, ok := s.rdb.(*redis.Client)
		if !ok {
			return fmt.Errorf("%w: a %T is neither a standalone nor a cluster client", ErrTrackingUnsupported, s.rdb)
		}
		t.follow(ctx, cancel, map[string]*redis.Options{c.Options().Addr: c.Options()})
		<-ctx.Done()
		return t.result(ctx)
	}
	tick := time.NewTicker(t.o.Topology)
	defer tick.Stop()
	for {
		masters, err := s.masters(ctx)
		if err == nil {
			t.follow(ctx, cancel, masters)
		} // else: the masters stay those known; a broken one is down anyway
		select {
		case <-ctx.Done():
			return t.result(ctx)
		case <-tick.C:
		}
	}
}

// masters returns the cluster's masters by address, with the options
// their connections are made with.
func (s *Store) masters(ctx context.Context) (map[string]*redis.Options, error) {
	var mu sync.Mutex
	m := make(map[string]*redis.Options)
	err := s.cluster.ForEachMaster(ctx, func(_ context.Context, c *redis.Client) error {
		mu.Lock()
		m[c.Options().Addr] = c.Options()
		mu.Unlock()
		return nil
	})
	return m, err
}

// tracker holds the tracking connections of one Track call.
type tracker struct {
	s  *Store
	c  *nearCache
	o  NearCacheOptions
	wg sync.WaitGroup

	mu    sync.Mutex
	nodes map[string]*trackedNode // by address: the masters tracked
}

type trackedNode struct {
	up       bool
	verified time.Time // see nearCache.verified
	stop     context.CancelFunc
}

// result is Track's error once ctx ended: nil when its caller ended it.
func (t *tracker) result(ctx context.Context) error {
	err := context.Cause(ctx)
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return nil
	}
	return err
}

// follow makes the tracked masters those of masters: it starts a
// connection to each new one and stops those of the masters gone. A change
// takes the cache down until every master is tracked.
func (t *tracker) follow(ctx context.Context, fail context.CancelCauseFunc, masters map[string]*redis.Options) {
	t.mu.Lock()
	defer t.mu.Unlock()
	changed := false
	for addr, n := range t.nodes {
		if _, ok := masters[addr]; !ok {
			n.stop()
			delete(t.nodes, addr)
			changed = true
		}
	}
	for addr, opt := range masters {
		if _, ok := t.nodes[addr]; ok {
			continue
		}
		nctx, stop := context.WithCancel(ctx)
		t.nodes[addr] = &trackedNode{stop: stop}
		changed = true
		t.wg.Go(func() {
			if err := t.keep(nctx, addr, opt); err != nil {
				fail(err)
			}
		})
	}
	if changed {
		t.s.stats.trackingChanges.Add(1)
		t.refresh()
	}
}

// refresh publishes the nodes' state to the cache. t.mu is held.
func (t *tracker) refresh() {
	up := len(t.nodes) > 0
	var oldest time.Time
	for _, n := range t.nodes {
		if !n.up {
			up = false
			break
		}
		if oldest.IsZero() || n.verified.Before(oldest) {
			oldest = n.verified
		}
	}
	switch {
	case up != t.c.up.Load():
		t.c.setUp(up, oldest)
	case up:
		t.c.verified.Store(oldest.UnixNano())
	}
}

// set records a node's state: up with the send time of its last
// acknowledged heartbeat, or down.
func (t *tracker) set(addr string, up bool, verified time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := t.nodes[addr]
	if n == nil {
		return // no longer a master
	}
	n.up, n.verified = up, verified
	t.refresh()
}

// keep holds a tracking connection to the master at addr until ctx ends,
// replacing it with a backoff whenever it fails.
func (t *tracker) keep(ctx context.Context, addr string, opt *redis.Options) error {
	const minBackoff, maxBackoff = 20 * time.Millisecond, 2 * time.Second
	backoff := minBackoff
	for {
		start := time.Now()
		err := t.session(ctx, addr, opt)
		if ctx.Err() != nil {
			return nil
		}
		if errors.Is(err, ErrTrackingUnsupported) {
			return err
		}
		t.s.stats.trackingFailures.Add(1)
		err = fmt.Errorf("tracking connection to %s: %w", addr, err)
		t.s.setTrackingError(err)
		if t.o.OnTrackingError != nil {
			t.o.OnTrackingError(err)
		}
		if time.Since(start) > 10*maxBackoff {
			backoff = minBackoff
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, maxBackoff)
	}
}

// session is one tracking connection to addr: set up, then heartbeats
// sent and invalidations applied until it fails or ctx ends. The node is
// up from the moment Redis confirmed tracking to the session's end.
func (t *tracker) session(ctx context.Context, addr string, opt *redis.Options) error {
	dctx, cancel := context.WithTimeout(ctx, cmp.Or(opt.DialTimeout, 5*time.Second))
	conn, err := opt.Dialer(dctx, "tcp", addr)
	cancel()
	if err != nil {
		return err
	}
	rc := newRESPConn(conn)
	reading := make(chan error, 1)
	readerDone := true // no reader to wait for
	defer func() {
		_ = conn.Close()
		if !readerDone {
			<-reading
		}
	}()
	stopClose := context.AfterFunc(ctx, func() { _ = conn.Close() })
	defer stopClose()

	_ = conn.SetDeadline(time.Now().Add(cmp.Or(opt.DialTimeout, 5*time.Second)))
	hello := []string{"HELLO", "3"}
	if opt.Password != "" {
		hello = append(hello, "AUTH", cmp.Or(opt.Username, "default"), opt.Password)
	}
	hello = append(hello, "SETNAME", "nudge-tracking")
	// One prefix, though it covers every key of nudge (outboxes, counters,
	// timers) and not only profiles: Redis compares every key written with
	// every prefix of every tracking client, and a prefix per bucket's
	// profiles (1,024) cost a third of the ingest rate. It also gathers a
	// prefix's keys into one message per event loop iteration. The reader
	// skips the keys that are not profiles.
	track := []string{"CLIENT", "TRACKING", "ON", "BCAST", "PREFIX", trackedPrefix}
	for _, cmd := range [][]string{hello, track} {
		if err := rc.send(cmd...); err != nil {
			return err
		}
		reply, err := rc.read()
		if err != nil {
			return err
		}
		if rerr, ok := reply.(respError); ok {
			if unsupported(rerr) {
				return fmt.Errorf("%w: %s %s: %w", ErrTrackingUnsupported, cmd[0], cmd[1], rerr)
			}
			return fmt.Errorf("%s %s: %w", cmd[0], cmd[1], rerr) // LOADING, auth...: tried again
		}
	}
	_ = conn.SetDeadline(time.Time{})

	// The heartbeats in flight, by send time, oldest first: each reply on
	// this connection is the PONG of the oldest.
	pings := make(chan time.Time, 1024)
	t.set(addr, true, time.Now())
	defer t.set(addr, false, time.Time{})
	readerDone = false
	go func() { reading <- t.read(rc, addr, pings) }()

	tick := time.NewTicker(t.o.Heartbeat)
	defer tick.Stop()
	verified := time.Now()
	for {
		select {
		case err := <-reading:
			readerDone = true
			return err
		case <-ctx.Done():
			return nil
		case now := <-tick.C:
			t.mu.Lock()
			if n := t.nodes[addr]; n != nil && n.up {
				verified = n.verified
			}
			t.mu.Unlock()
			if silent := now.Sub(verified); silent > t.o.MaxSilence {
				return fmt.Errorf("no heartbeat acknowledged for %v (max silence %v)", silent.Round(time.Millisecond), t.o.MaxSilence)
			}
			select {
			case pings <- now:
			default:
				return fmt.Errorf("%d heartbeats unacknowledged", cap(pings))
			}
			_ = conn.SetWriteDeadline(now.Add(t.o.MaxSilence))
			if err := rc.send("PING"); err != nil {
				return err
			}
		}
	}
}

// read applies what a tracking connection receives until it fails:
// invalidations, and the heartbeats' replies.
func (t *tracker) read(rc *respConn, addr string, pings chan time.Time) error {
	for {
		v, err := rc.read()
		if err != nil {
			return err
		}
		switch m := v.(type) {
		case respPush:
			if m.kind != "invalidate" || len(m.args) == 0 {
				continue
			}
			keys, ok := m.args[0].([]any)
			if !ok { // null: the database was flushed
				t.c.flush()
				continue
			}
			for _, k := range keys {
				if key, ok := k.(string); ok && isProfileKey(key) {
					t.c.invalidate(key)
				}
			}
		case respError:
			return fmt.Errorf("heartbeat: %w", m)
		default:
			select {
			case sent := <-pings:
				t.set(addr, true, sent)
			default:
				return fmt.Errorf("%w: a reply to no command: %v", errRESPProtocol, v)
			}
		}
	}
}

// unsupported reports whether an error reply to HELLO 3 or CLIENT
// TRACKING says the server cannot track (an older Redis, a store speaking
// only part of the protocol), rather than that it cannot now (LOADING, a
// refused password): only the first turns the near-cache off for good.
func unsupported(err respError) bool {
	msg := strings.ToLower(string(err))
	return strings.HasPrefix(msg, "noproto") || strings.Contains(msg, "unknown command") ||
		strings.Contains(msg, "unknown subcommand") || strings.Contains(msg, "syntax error") ||
		strings.Contains(msg, "wrong number of arguments")
}

// trackedPrefix is the prefix of every key nudge writes (keys.go).
const trackedPrefix = "nudge:{"

// isProfileKey reports whether key, one of nudge's, is a profile's:
// nudge:{b}:p:<user_id>.
func isProfileKey(key string) bool {
	i := strings.IndexByte(key, '}')
	return i > 0 && strings.HasPrefix(key[i+1:], ":p:")
}

// setTrackingError keeps the last tracking failure for Stats.
func (s *Store) setTrackingError(err error) {
	s.trackingErr.Store(&err)
}

// NearCacheStats describe the near-cache. Hits, Misses and Bypasses count
// Get's and GetMany's users: served from the cache, read from Redis with
// the cache up, and read from Redis with the cache down (tracking not
// established on every master, or its heartbeat late).
type NearCacheStats struct {
	Enabled                bool
	Up                     bool // tracking established on every master
	Hits, Misses, Bypasses uint64
	Stored, Refused        uint64 // replies cached, and refused (an invalidation raced them)
	Shared                 uint64 // reads that waited for another caller's read of the same user
	Invalidations, Evicted uint64
	Flushes                uint64
	Entries                int
	Bytes                  int64 // estimated memory of the entries
	TrackingFailures       uint64
	TopologyChanges        uint64
	LastTrackingError      string
}

// NearCache returns the near-cache's counters so far.
func (s *Store) NearCache() NearCacheStats {
	c := s.near
	if c == nil {
		return NearCacheStats{}
	}
	st := NearCacheStats{
		Enabled: true, Up: c.up.Load(),
		Hits: c.hits.Load(), Misses: c.misses.Load(), Bypasses: c.bypasses.Load(),
		Stored: c.stores.Load(), Refused: c.refused.Load(), Shared: c.shared.Load(),
		Invalidations: c.invalidations.Load(), Evicted: c.evictions.Load(), Flushes: c.flushes.Load(),
		TrackingFailures: s.stats.trackingFailures.Load(), TopologyChanges: s.stats.trackingChanges.Load(),
	}
	st.Entries, st.Bytes = c.size()
	if err := s.trackingErr.Load(); err != nil {
		st.LastTrackingError = (*err).Error()
	}
	return st
}
