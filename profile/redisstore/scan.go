package redisstore

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"strconv"
	"strings"
	"sync"

	"github.com/redis/go-redis/v9"
	"go.opentelemetry.io/otel/attribute"

	"github.com/nudge-dm/nudge/profile"
)

// This file reads every profile of the store, for exports (features for
// models): SCAN over the profile keys of every master, never KEYS, which
// blocks Redis for as long as it walks the whole keyspace; each page of
// keys read with one pipeline of GETs. Profiles read this way are not put
// in the near-cache: a scan would evict what decisions read.

// DefaultScanPage is ScanProfiles' page size when not given.
const DefaultScanPage = 500

// profileMatch is the SCAN pattern of every profile key (keys.go): the
// braces of the hash tag are not special in a Redis glob.
const profileMatch = "nudge:{*}:p:*"

const (
	spanScan       = "nudge.profile.scan"
	attrScanned    = attribute.Key("nudge.profile.scanned")
	attrDuplicates = attribute.Key("nudge.profile.duplicates")
)

// ScanProfiles calls fn with every stored profile, a page of at most
// pageSize (DefaultScanPage when not positive) at a time, in no particular
// order, until every profile key of every master (on a cluster) was
// visited, fn returns an error, or ctx ends. A page is three slices of
// one length: the users, their profiles, and for each nil or a wrapped
// profile.ErrCorrupt (the profile then nil) when the key holds something
// that is not a profile (an encoding this version cannot read, another
// Redis type): that user's alone, the scan goes on. fn is never called
// concurrently, nor with an empty page; it must not keep the slices after
// it returns (they are reused; the profiles are not, fn may keep them).
//
// It reads with SCAN ... MATCH COUNT pageSize on each master (the masters
// of a cluster at once) and one pipeline of at most pageSize GETs per page
// of keys, so that Redis is never blocked for long and the process holds
// one page per master. A key deleted between its SCAN and its GET is
// skipped. SCAN may return a key more than once (while Redis rehashes):
// ScanProfiles gives each user at most once, remembering the 64-bit keyed
// hash of every user given (hashSet): 8 bytes per user, in a table kept
// between 3/8 and 3/4 full, so 11 to 22 bytes per user (11 to 22 MB per
// million users), freed when it returns. Two users whose hashes collide
// (about 1 in 2^64 per pair, so about 3 in 10,000 exports of 100 million
// users) would make the second one skipped. A profile written during the scan may be given as it was
// before or after the write; one created or deleted during it may or may
// not be given.
//
// It returns nil once every key was visited, fn's error, ctx's error, or
// a wrapped profile.ErrUnavailable when Redis fails.
func (s *Store) ScanProfiles(ctx context.Context, pageSize int, fn func(userIDs []string, profiles []*profile.Profile, errs []error) error) error {
	if pageSize <= 0 {
		pageSize = DefaultScanPage
	}
	ctx, span := s.startSpan(ctx, spanScan)
	sc := &scan{s: s, pageSize: pageSize, fn: fn, seed: maphash.MakeSeed()}
	err := sc.run(ctx)
	if span != nil {
		if span.IsRecording() {
			span.SetAttributes(attrScanned.Int(sc.seen.n), attrDuplicates.Int(sc.duplicates))
			if err != nil {
				failSpan(span, err)
			}
		}
		span.End()
	}
	return err
}

// scan is one ScanProfiles call.
type scan struct {
	s        *Store
	pageSize int
	fn       func([]string, []*profile.Profile, []error) error

	mu         sync.Mutex // held while fn runs, and for seen
	seed       maphash.Seed
	seen       hashSet // keyed hashes of the users given or being read
	duplicates int
}

// run scans the standalone server, or every master of the cluster at
// once; the first failure stops the others.
func (sc *scan) run(ctx context.Context) error {
	if sc.s.cluster == nil {
		return sc.node(ctx, sc.s.rdb)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		once  sync.Once
		first error
	)
	err := sc.s.cluster.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error {
		err := sc.node(ctx, c)
		if err != nil {
			// ForEachMaster returns whichever error it sees first, which
			// may be another master's cancellation.
			once.Do(func() { first = err; cancel() })
		}
		return err
	})
	switch {
	case first != nil:
		return first
	case err != nil && ctx.Err() != nil:
		return ctx.Err()
	case err != nil: // the cluster's masters could not be listed
		return fmt.Errorf("%w: list the masters: %w", profile.ErrUnavailable, err)
	}
	return nil
}

// node scans the profile keys of one node (SCAN is per node).
func (sc *scan) node(ctx context.Context, c redis.Cmdable) error {
	var (
		cursor uint64
		page   scanPage
	)
	for {
		keys, next, err := c.Scan(ctx, cursor, profileMatch, int64(sc.pageSize)).Result()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("%w: scan: %w", profile.ErrUnavailable, err)
		}
		// COUNT is a hint: a page may hold more keys than asked.
		for len(keys) > 0 {
			n := min(len(keys), sc.pageSize)
			page.reset()
			if err := sc.read(ctx, keys[:n], &page); err != nil {
				return err
			}
			keys = keys[n:]
			if len(page.users) == 0 {
				continue
			}
			sc.mu.Lock()
			err = sc.fn(page.users, page.profiles, page.errs)
			sc.mu.Unlock()
			if err != nil {
				return err
			}
		}
		if next == 0 {
			return nil
		}
		cursor = next
	}
}

// scanPage is a page for fn, its slices reused from page to page.
type scanPage struct {
	users    []string
	profiles []*profile.Profile
	errs     []error
}

func (p *scanPage) reset() {
	clear(p.profiles) // let the last page's profiles go
	p.users, p.profiles, p.errs = p.users[:0], p.profiles[:0], p.errs[:0]
}

// read reads the profiles at keys not given before in one pipeline,
// appending them to page.
func (sc *scan) read(ctx context.Context, keys []string, page *scanPage) error {
	users := make([]string, 0, len(keys))
	sc.mu.Lock()
	for _, k := range keys {
		u, ok := sc.s.keys.userOf(k)
		if !ok {
			continue // not a profile key of this layout
		}
		if !sc.seen.add(maphash.String(sc.seed, u)) {
			sc.duplicates++
			continue
		}
		users = append(users, u)
	}
	sc.mu.Unlock()
	if len(users) == 0 {
		return nil
	}
	// Through the store's client (on a cluster it routes each GET to the
	// master of its slot now), without keeping them in the near-cache.
	profiles, errs := sc.s.getMany(ctx, users, false)
	for i, err := range errs {
		switch {
		case errors.Is(err, profile.ErrNotFound):
			continue // deleted (or expired) since SCAN
		case err != nil && !errors.Is(err, profile.ErrCorrupt):
			return err // the context's, or the store unavailable
		}
		page.users = append(page.users, users[i])
		page.profiles = append(page.profiles, profiles[i])
		page.errs = append(page.errs, err)
	}
	return nil
}

// userOf returns the user whose profile key (ProfileKey) key is; false
// for a key that is not one of this layout's (another number of buckets).
func (l Layout) userOf(key string) (string, bool) {
	rest, ok := strings.CutPrefix(key, "nudge:{")
	if !ok {
		return "", false
	}
	// The bucket is digits: the first "}:p:" ends it, whatever the id.
	b, user, ok := strings.Cut(rest, "}:p:")
	if !ok || user == "" {
		return "", false
	}
	bucket, err := strconv.Atoi(b)
	if err != nil || strconv.Itoa(bucket) != b || bucket != l.Bucket(user) {
		return "", false
	}
	return user, true
}

// hashSet is a set of 64-bit hashes, open addressing with linear probing:
// 8 bytes a slot, where a Go map[uint64]struct{} takes 20 to 40 bytes an
// entry. The zero hashSet is empty.
type hashSet struct {
	slots []uint64 // 0: empty (hash 0 is stored as 1)
	n     int
}

// add adds h and reports whether it was not there yet.
func (s *hashSet) add(h uint64) bool {
	if h == 0 {
		h = 1
	}
	if 4*(s.n+1) > 3*len(s.slots) {
		s.grow()
	}
	mask := uint64(len(s.slots) - 1)
	for i := h & mask; ; i = (i + 1) & mask {
		switch s.slots[i] {
		case h:
			return false
		case 0:
			s.slots[i] = h
			s.n++
			return true
		}
	}
}

// grow doubles the table (1024 slots at first) and re-inserts every hash.
func (s *hashSet) grow() {
	old := s.slots
	s.slots = make([]uint64, max(1024, 2*len(old)))
	mask := uint64(len(s.slots) - 1)
	for _, h := range old {
		if h == 0 {
			continue
		}
		i := h & mask
		for s.slots[i] != 0 {
			i = (i + 1) & mask
		}
		s.slots[i] = h
	}
}
