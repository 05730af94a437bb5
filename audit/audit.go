// Package audit logs decisions to a Redis stream, sampled and
// asynchronously, so that no decision ever waits for it, and reads the
// stream back (Newest and Read, for AdminService.TailDecisions and so
// nudgectl decisions tail; Tail, directly from Redis).
//
// Concurrency: a Log is safe for concurrent use. Record never blocks: when
// the buffer is full the entry is dropped and counted (Dropped). Run owns
// the writing goroutine's lifetime.
package audit

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"math"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/nudge-dm/nudge/profile/redisstore"
)

// writeTimeout bounds one pipelined write of a batch.
const writeTimeout = 2 * time.Second

// DefaultStream is the audit stream's key (redisstore's key layout; the
// store's Delete erases a user's entries from it).
const DefaultStream = redisstore.AuditStream

// Entry is one logged decision.
type Entry struct {
	DecisionID     string    `json:"decision_id"`
	At             time.Time `json:"at"`
	UserID         string    `json:"user_id"`
	Channel        string    `json:"channel"`
	Placement      string    `json:"placement,omitempty"`
	Verdict        string    `json:"verdict"`
	OfferID        string    `json:"offer_id,omitempty"`
	Degraded       bool      `json:"degraded,omitempty"`
	Stale          bool      `json:"stale,omitempty"`
	Control        bool      `json:"control,omitempty"`
	ProfileVersion uint64    `json:"profile_version"`
	RulesVersion   string    `json:"rules_version"`
	Reasons        []Reason  `json:"reasons,omitempty"`
}

// Reason is one reason of a decision.
type Reason struct {
	RuleID  string `json:"rule_id,omitempty"`
	Message string `json:"message"`
}

// Options configure a Log. The zero value of a field means its default.
type Options struct {
	// Sample is the share of decisions logged, in [0, 1]. Default 0: none.
	Sample float64
	// MaxLen caps the stream, approximately (XADD MAXLEN ~): the oldest
	// entries go first. The stream has no consumer groups, so trimming by
	// length loses nothing anyone waits for. Default 100,000.
	MaxLen int64
	// Buffer is how many entries may wait for the writer. Default 4096.
	Buffer int
	// Batch is the most entries written in one pipeline. Default 256.
	Batch int
}

// Log writes sampled decisions to the audit stream.
type Log struct {
	rdb       redis.UniversalClient
	opt       Options
	threshold uint64 // a decision is sampled when hash(id) < threshold
	ch        chan Entry
	dropped   atomic.Uint64
	written   atomic.Uint64
	failed    atomic.Uint64
}

// New returns a Log on rdb; call Run to start writing.
func New(rdb redis.UniversalClient, opt Options) *Log {
	if opt.MaxLen <= 0 {
		opt.MaxLen = 100_000
	}
	if opt.Buffer <= 0 {
		opt.Buffer = 4096
	}
	if opt.Batch <= 0 {
		opt.Batch = 256
	}
	l := &Log{rdb: rdb, opt: opt, ch: make(chan Entry, opt.Buffer)}
	switch {
	case opt.Sample >= 1:
		l.threshold = math.MaxUint64
	case opt.Sample > 0:
		l.threshold = uint64(opt.Sample * math.MaxUint64)
	}
	return l
}

// Sampled reports whether the decision with this id is to be logged. The
// choice is a hash of the id, so it is the same on every server.
func (l *Log) Sampled(decisionID string) bool {
	if l.threshold == 0 {
		return false
	}
	if l.threshold == math.MaxUint64 {
		return true
	}
	h := fnv.New64a()
	h.Write([]byte(decisionID))
	return mix(h.Sum64()) < l.threshold
}

// mix is the splitmix64 finaliser: FNV-1a alone leaves its high bits biased
// for ids that differ only in their last characters.
func mix(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}

// Record queues an entry without waiting; it reports false when the buffer
// was full and the entry was dropped.
func (l *Log) Record(e Entry) bool {
	select {
	case l.ch <- e:
		return true
	default:
		l.dropped.Add(1)
		return false
	}
}

// Stats are the Log's counters.
type Stats struct{ Written, Dropped, Failed uint64 }

// Stats returns the entries written, dropped for a full buffer, and lost to
// write errors so far.
func (l *Log) Stats() Stats {
	return Stats{Written: l.written.Load(), Dropped: l.dropped.Load(), Failed: l.failed.Load()}
}

// Run writes queued entries until ctx ends, then writes what is still
// queued (bounded by a short timeout) and returns.
func (l *Log) Run(ctx context.Context) {
	batch := make([]Entry, 0, l.opt.Batch)
	for {
		select {
		case e := <-l.ch:
			l.write(ctx, l.take(append(batch[:0], e)))
		case <-ctx.Done():
			deadline := time.Now().Add(writeTimeout)
			for time.Now().Before(deadline) {
				if batch = l.take(batch[:0]); len(batch) == 0 {
					return
				}
				l.write(ctx, batch)
			}
			return
		}
	}
}

// take appends queued entries to batch, without waiting, up to a batch.
func (l *Log) take(batch []Entry) []Entry {
	for len(batch) < l.opt.Batch {
		select {
		case e := <-l.ch:
			batch = append(batch, e)
		default:
			return batch
		}
	}
	return batch
}

// write writes one batch. A write is not cut short when Run's context
// ends (that only stops the loop), but it gives up after writeTimeout.
func (l *Log) write(ctx context.Context, batch []Entry) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), writeTimeout)
	defer cancel()
	_, err := l.rdb.Pipelined(ctx, func(pipe redis.Pipeliner) error {
		for i := range batch {
			pipe.XAdd(ctx, &redis.XAddArgs{Stream: DefaultStream, MaxLen: l.opt.MaxLen, Approx: true, Values: fields(&batch[i])})
		}
		return nil
	})
	if err != nil {
		l.failed.Add(uint64(len(batch)))
		return
	}
	l.written.Add(uint64(len(batch)))
}

func fields(e *Entry) []any {
	reasons, _ := json.Marshal(e.Reasons) // plain structs cannot fail
	return []any{
		"decision_id", e.DecisionID,
		"at", e.At.UTC().Format(time.RFC3339Nano),
		"user_id", e.UserID,
		"channel", e.Channel,
		"placement", e.Placement,
		"verdict", e.Verdict,
		"offer_id", e.OfferID,
		"degraded", strconv.FormatBool(e.Degraded),
		"stale", strconv.FormatBool(e.Stale),
		"control", strconv.FormatBool(e.Control),
		"profile_version", strconv.FormatUint(e.ProfileVersion, 10),
		"rules_version", e.RulesVersion,
		"reasons", string(reasons),
	}
}

// ErrBadEntry means a stream entry is not an audit entry.
var ErrBadEntry = errors.New("audit: malformed entry")

// Decode parses an audit stream entry.
func Decode(values map[string]any) (Entry, error) {
	str := func(k string) string { s, _ := values[k].(string); return s }
	e := Entry{
		DecisionID:   str("decision_id"),
		UserID:       str("user_id"),
		Channel:      str("channel"),
		Placement:    str("placement"),
		Verdict:      str("verdict"),
		OfferID:      str("offer_id"),
		Degraded:     str("degraded") == "true",
		Stale:        str("stale") == "true",
		Control:      str("control") == "true",
		RulesVersion: str("rules_version"),
	}
	if e.DecisionID == "" {
		return e, fmt.Errorf("%w: no decision_id", ErrBadEntry)
	}
	var err error
	if e.At, err = time.Parse(time.RFC3339Nano, str("at")); err != nil {
		return e, fmt.Errorf("%w: at: %w", ErrBadEntry, err)
	}
	if e.ProfileVersion, err = strconv.ParseUint(str("profile_version"), 10, 64); err != nil {
		return e, fmt.Errorf("%w: profile_version: %w", ErrBadEntry, err)
	}
	if r := str("reasons"); r != "" && r != "null" {
		if err := json.Unmarshal([]byte(r), &e.Reasons); err != nil {
			return e, fmt.Errorf("%w: reasons: %w", ErrBadEntry, err)
		}
	}
	return e, nil
}
