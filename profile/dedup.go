package profile

import (
	"hash/fnv"
	"slices"
	"sort"
	"time"
)

// Deduplication. A profile remembers the hash of the id of every event it
// applied, grouped by the UTC day of the event's time, for as long as an
// event of that day can still be accepted: the retention (90 days), plus
// one day so that servers whose clocks differ cannot accept again an
// event another has forgotten. A re-sent event is therefore a duplicate
// however old it is, or rejected as older than the retention: it never
// counts twice.
//
// The memory is 8 bytes per event id kept, plus a few bytes per day.
// Limits.DedupMax bounds the ids of a profile (4,096 by default, 32 KiB).
// Past it, the oldest days are forgotten whole, and the profile then
// rejects events of those days (Profile.DedupFloor, reason "dedup
// horizon"), since it could no longer tell a re-sent one. A single day
// with more ids than DedupMax (a bot, a load test's hottest user) keeps
// its latest DedupMax: for such a user a re-sent event whose id was
// forgotten would count again; that is the one exception to exactly
// once, and the price of a bounded profile for an unbounded user. A
// shopper with 40 events a day for 90 days fits in the bound.
//
// The hash is 64-bit FNV-1a: with 4,096 ids in a profile the chance that
// a new event is taken for a duplicate is 4,096 / 2^64, about 2 in 10^16
// per event.

// SeenDay remembers the ids of the events applied whose event time fell
// on one UTC day.
type SeenDay struct {
	// Day is the UTC day, in days since the Unix epoch.
	Day int64
	// Hashes are the HashEventID of the ids, in the order applied.
	Hashes []uint64
}

// HashEventID is the hash under which an event id is remembered.
func HashEventID(id string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(id))
	return h.Sum64()
}

// HasSeen reports whether the event id is remembered, whatever the day
// of the event that carried it.
func (p *Profile) HasSeen(eventID string) bool {
	h := HashEventID(eventID)
	for i := range p.Seen {
		if slices.Contains(p.Seen[i].Hashes, h) {
			return true
		}
	}
	return false
}

// RememberedIDs returns how many event ids the profile remembers.
func (p *Profile) RememberedIDs() int {
	n := 0
	for i := range p.Seen {
		n += len(p.Seen[i].Hashes)
	}
	return n
}

// seenDay returns the remembered ids of a day, creating it.
func (p *Profile) seenDay(day int64) *SeenDay {
	i := sort.Search(len(p.Seen), func(i int) bool { return p.Seen[i].Day >= day })
	if i == len(p.Seen) || p.Seen[i].Day != day {
		p.Seen = slices.Insert(p.Seen, i, SeenDay{Day: day})
	}
	return &p.Seen[i]
}

// remember adds the hash of an id not seen to its day.
func (d *SeenDay) remember(h uint64) { d.Hashes = append(d.Hashes, h) }

// compactSeen forgets the days no event of which can be accepted any
// more at processing time now (with a day of margin), then the oldest
// days while more than DedupMax ids remain, raising DedupFloor past them,
// and last the oldest ids of a single day over DedupMax.
func (p *Profile) compactSeen(now time.Time, l Limits) {
	// Day d holds events before (d+1) days; they are all rejected once
	// that is before now - Retention.
	last := unixDay(now.Add(-l.Retention)) - 2 // the latest day to forget
	k := 0
	for k < len(p.Seen) && p.Seen[k].Day <= last {
		k++
	}
	n := p.RememberedIDs()
	for i := range k {
		n -= len(p.Seen[i].Hashes)
	}
	for n > l.DedupMax && len(p.Seen)-k > 1 {
		n -= len(p.Seen[k].Hashes)
		p.DedupFloor = max(p.DedupFloor, p.Seen[k].Day+1)
		k++
	}
	if k > 0 {
		m := copy(p.Seen, p.Seen[k:])
		clear(p.Seen[m:])
		p.Seen = p.Seen[:m]
	}
	if n > l.DedupMax {
		d := &p.Seen[0]
		d.Hashes = append(d.Hashes[:0], d.Hashes[n-l.DedupMax:]...)
	}
	if len(p.Seen) == 0 {
		p.Seen = nil
	}
}
