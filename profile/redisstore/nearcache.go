package redisstore

import (
	"hash/maphash"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nudge-dm/nudge/profile"
)

// This file is the near-cache: decoded profiles kept in this process and
// served to Get and GetMany while Redis has not said that their keys
// changed (DESIGN.md: the decision path reads from a near-cache that Redis
// keeps coherent). tracking.go keeps the tracking connections that bring
// Redis's invalidations; this file is the cache's own logic, with no I/O.
//
// Coherence rests on three rules:
//
//  1. An entry is served only while tracking is up on every master and
//     every master acknowledged a heartbeat sent less than MaxSilence ago.
//     Redis sends a connection's invalidations in order with its replies,
//     so a PONG proves that every write Redis executed before that PING has
//     been announced: a hit reflects every write older than MaxSilence, and
//     in practice every write whose invalidation crossed the loopback or
//     the LAN (well under a millisecond).
//  2. A value read from Redis is stored only if no invalidation touched its
//     shard, and tracking did not go down or come up, between the moment
//     the read was decided and the moment its reply arrived (a ticket's
//     generation and epoch): an invalidation racing the reply, on another
//     connection, must not be overtaken by the value it invalidates.
//  3. When tracking goes down (a connection cut, silent, or refused; Redis
//     restarted; the set of masters changed) the cache is emptied and
//     bypassed until tracking is back; reads started before it came back
//     store nothing.
//
// Writes of this process invalidate their keys here as soon as their EXEC
// returns (whatever it returned), so an instance reads its own writes at
// once; other instances' writes arrive as invalidations.

// nearShards is the number of independently locked parts of the cache. An
// invalidation refuses the reads in flight on its shard, so more shards
// refuse fewer of them under a heavy write load.
const nearShards = 256

// entryOverhead is the memory an entry costs beyond its profile's decoded
// data: the map slot, the key, the list links.
const entryOverhead = 160

// nearCache is a bounded LRU of decoded profiles by profile key, coherent
// with Redis as described above. A nil *nearCache is a cache that is off.
type nearCache struct {
	seed       maphash.Seed
	shardBytes int64         // each shard's memory bound
	maxSilence time.Duration // see NearCacheOptions.MaxSilence
	now        func() time.Time

	// up says tracking is established on every master; verified is the
	// time (unix ns) at which the least recently confirmed master was
	// last sent a heartbeat that it has acknowledged since.
	up       atomic.Bool
	verified atomic.Int64
	// epoch changes whenever tracking goes down or comes up, and when the
	// cache is flushed: a ticket of an older epoch stores nothing.
	epoch atomic.Uint64

	shards [nearShards]nearShard

	hits, misses, bypasses, stores, refused atomic.Uint64
	shared                                  atomic.Uint64 // reads served by another's flight
	invalidations, evictions, flushes       atomic.Uint64
}

type nearShard struct {
	mu    sync.Mutex
	gen   uint64 // changes with every invalidation in the shard
	items map[string]*nearEntry
	// flights are the reads of the shard's keys from Redis in flight,
	// which concurrent misses of the same key share (join).
	flights map[string]*flight
	// head is the most recently used entry; the list is circular, so
	// head.prev is the least recently used one.
	head  *nearEntry
	bytes int64
}

type nearEntry struct {
	key        string
	p          *profile.Profile // nil: the user has no profile
	size       int64
	prev, next *nearEntry
}

func newNearCache(o NearCacheOptions, now func() time.Time) *nearCache {
	c := &nearCache{
		seed:       maphash.MakeSeed(),
		shardBytes: max(o.MaxBytes/nearShards, 1),
		maxSilence: o.MaxSilence,
		now:        now,
	}
	for i := range c.shards {
		c.shards[i].items = make(map[string]*nearEntry)
		c.shards[i].flights = make(map[string]*flight)
	}
	return c
}

func (c *nearCache) shard(key string) *nearShard {
	return &c.shards[maphash.String(c.seed, key)%nearShards]
}

// usable reports whether entries may be served now (rule 1).
func (c *nearCache) usable() bool {
	return c.up.Load() && c.now().UnixNano()-c.verified.Load() < int64(c.maxSilence)
}

// lookup returns the cached profile of key, or found false. A profile
// older than minVersion is not served. A hit with p nil means the user has
// no profile (and minVersion is 0).
func (c *nearCache) lookup(key string, minVersion uint64) (p *profile.Profile, found bool) {
	if c == nil {
		return nil, false
	}
	if !c.usable() {
		c.bypasses.Add(1)
		return nil, false
	}
	sh := c.shard(key)
	sh.mu.Lock()
	e := sh.items[key]
	if e == nil || (e.p == nil && minVersion > 0) || (e.p != nil && e.p.Version < minVersion) {
		sh.mu.Unlock()
		c.misses.Add(1)
		return nil, false
	}
	sh.touch(e)
	sh.mu.Unlock()
	c.hits.Add(1)
	return e.p, true
}

// ticket is what a read from Redis needs to store its reply: the state of
// the key's shard and of tracking when the read was decided.
type ticket struct {
	gen, epoch uint64
	ok         bool
}

// begin returns the ticket of a read of key from Redis, about to be sent.
func (c *nearCache) begin(key string) ticket {
	if c == nil || !c.up.Load() {
		return ticket{}
	}
	epoch := c.epoch.Load()
	sh := c.shard(key)
	sh.mu.Lock()
	gen := sh.gen
	sh.mu.Unlock()
	return ticket{gen: gen, epoch: epoch, ok: true}
}

// store caches p (nil: no profile) as key's value read with t, unless
// something may have changed key since t was taken (rule 2). size is the
// profile's encoded size.
func (c *nearCache) store(t ticket, key string, p *profile.Profile, size int) {
	if c == nil || !t.ok {
		return
	}
	cost := entryOverhead + int64(len(key))
	if p != nil {
		cost += decodedSize(size)
	}
	sh := c.shard(key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if sh.gen != t.gen || c.epoch.Load() != t.epoch || !c.up.Load() || cost > c.shardBytes {
		c.refused.Add(1)
		return
	}
	if old := sh.items[key]; old != nil {
		sh.remove(old)
	}
	e := &nearEntry{key: key, p: p, size: cost}
	sh.items[key] = e
	sh.pushFront(e)
	sh.bytes += cost
	for sh.bytes > c.shardBytes {
		sh.remove(sh.head.prev)
		c.evictions.Add(1)
	}
	c.stores.Add(1)
}

// flight is a read of a key from Redis that concurrent misses of the
// same key may wait for instead of sending their own: one round trip for
// all of them.
type flight struct {
	t    ticket
	done chan struct{} // closed when p and err are set
	p    *profile.Profile
	err  error
}

// join returns the flight of a read of key to wait for, or, leader true,
// a new flight whose read the caller must send and then land. A flight
// is joined only while tracking is up and no invalidation has touched
// the key's shard since its read was decided: its reply is then as
// current as the cache's entries are (a read sent now could not be told
// apart from it but by the network). Without a cache, or with tracking
// down, every caller leads a flight of its own.
func (c *nearCache) join(key string) (f *flight, leader bool) {
	if c == nil || !c.up.Load() {
		return &flight{done: make(chan struct{})}, true
	}
	epoch := c.epoch.Load()
	sh := c.shard(key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if f := sh.flights[key]; f != nil && f.t.gen == sh.gen && f.t.epoch == epoch {
		c.shared.Add(1)
		return f, false
	}
	f = &flight{t: ticket{gen: sh.gen, epoch: epoch, ok: true}, done: make(chan struct{})}
	sh.flights[key] = f
	return f, true
}

// land ends a flight the caller led, with its reply, and wakes those
// who joined it.
func (c *nearCache) land(key string, f *flight, p *profile.Profile, err error) {
	f.p, f.err = p, err
	close(f.done)
	if c == nil || !f.t.ok {
		return
	}
	sh := c.shard(key)
	sh.mu.Lock()
	if sh.flights[key] == f {
		delete(sh.flights, key)
	}
	sh.mu.Unlock()
}

// invalidate drops key, and refuses the replies of reads of its shard in
// flight.
func (c *nearCache) invalidate(key string) {
	if c == nil {
		return
	}
	sh := c.shard(key)
	sh.mu.Lock()
	sh.gen++
	if e := sh.items[key]; e != nil {
		sh.remove(e)
	}
	sh.mu.Unlock()
	c.invalidations.Add(1)
}

// flush empties the cache and refuses every read in flight.
func (c *nearCache) flush() {
	if c == nil {
		return
	}
	c.epoch.Add(1)
	for i := range c.shards {
		sh := &c.shards[i]
		sh.mu.Lock()
		sh.gen++
		clear(sh.items)
		sh.head, sh.bytes = nil, 0
		sh.mu.Unlock()
	}
	c.flushes.Add(1)
}

// setUp records that tracking came up (verified at the time given) or went
// down. Either way the cache starts empty: what it held is not known to be
// current (down), or was read before tracking covered it (up).
func (c *nearCache) setUp(up bool, verified time.Time) {
	if up {
		c.verified.Store(verified.UnixNano())
	}
	c.up.Store(up)
	c.flush()
}

// size returns the entries and their estimated bytes.
func (c *nearCache) size() (entries int, bytes int64) {
	for i := range c.shards {
		sh := &c.shards[i]
		sh.mu.Lock()
		entries += len(sh.items)
		bytes += sh.bytes
		sh.mu.Unlock()
	}
	return entries, bytes
}

// decodedSize estimates the memory of a decoded profile from its encoded
// size: its maps, slices and strings take about 4.4 times the bytes of the
// compact encoding plus 800 (measured by TestDecodedSizeEstimate, which
// checks that this bound holds).
func decodedSize(encoded int) int64 { return 5*int64(encoded) + 1024 }

func (sh *nearShard) pushFront(e *nearEntry) {
	if sh.head == nil {
		e.prev, e.next = e, e
	} else {
		e.next, e.prev = sh.head, sh.head.prev
		sh.head.prev.next = e
		sh.head.prev = e
	}
	sh.head = e
}

func (sh *nearShard) unlink(e *nearEntry) {
	if e.next == e {
		sh.head = nil
	} else {
		e.prev.next, e.next.prev = e.next, e.prev
		if sh.head == e {
			sh.head = e.next
		}
	}
	e.prev, e.next = nil, nil
}

func (sh *nearShard) touch(e *nearEntry) {
	if sh.head != e {
		sh.unlink(e)
		sh.pushFront(e)
	}
}

func (sh *nearShard) remove(e *nearEntry) {
	sh.unlink(e)
	delete(sh.items, e.key)
	sh.bytes -= e.size
}
