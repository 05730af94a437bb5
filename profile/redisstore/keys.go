package redisstore

import (
	"encoding/json"
	"fmt"
	"hash/fnv"
	"strconv"
	"time"

	"github.com/nudge-dm/nudge/profile"
)

// This file is nudge's key layout in Redis (DESIGN.md, "Cluster-friendly
// key layout") and the form of an outbox entry: the store writes both,
// delivery reads the outboxes and the dead-letter stream, audit writes its
// stream, and nudgectl reads them. Nothing else builds a key.
//
// Every key of a user carries the hash tag of the user's bucket, so that
// a transaction on a profile and the XADD of its actions touch one hash
// slot of a Redis Cluster:
//
//	nudge:{b}:p:<user_id>   the profile (profile.Encode)
//	nudge:{b}:out           the outbox stream of bucket b (ActionFields)
//	nudge:{b}:t:<k>         when users of the bucket are due (timers.go)
//	nudge:{b}:t             the earliest due time of each nudge:{b}:t:<k>
//	nudge:{b}:m             campaign counters of the bucket's users (measure.go)
//	nudge:dead              actions delivered too many times (delivery)
//	nudge:groups            last activity of each consumer group (delivery)
//	nudge:audit             sampled decisions (audit)

// DefaultBuckets is the number of buckets when none is configured.
const DefaultBuckets = 1024

// Keys that are not per bucket.
const (
	// DeadStream holds the outbox entries a consumer group could not
	// handle, with the group, the entry's old id and its delivery count.
	DeadStream = "nudge:dead"
	// AuditStream holds sampled decisions.
	AuditStream = "nudge:audit"
	// GroupsKey is a hash of the last activity of each consumer group of
	// the outboxes (group -> unix milliseconds), which tells trimming the
	// groups nobody uses any more. One key, not per bucket: it is written
	// with single-key commands only.
	GroupsKey = "nudge:groups"
)

// Layout names nudge's keys for a number of buckets. The zero Layout has
// DefaultBuckets.
type Layout struct {
	buckets int
}

// NewLayout returns the layout of a deployment with the given number of
// buckets (DefaultBuckets when not positive). The number is part of every
// key: changing it on a live deployment orphans every profile.
func NewLayout(buckets int) Layout {
	if buckets <= 0 {
		buckets = DefaultBuckets
	}
	return Layout{buckets: buckets}
}

// Buckets returns the number of buckets.
func (l Layout) Buckets() int {
	if l.buckets <= 0 {
		return DefaultBuckets
	}
	return l.buckets
}

// Bucket returns the user's bucket, the hash tag of all the user's keys.
func (l Layout) Bucket(userID string) int {
	h := fnv.New32a()
	h.Write([]byte(userID))
	return int(h.Sum32() % uint32(l.Buckets()))
}

// ProfileKey is the key of the user's profile: nudge:{bucket}:p:<user_id>.
func (l Layout) ProfileKey(userID string) string {
	return "nudge:{" + strconv.Itoa(l.Bucket(userID)) + "}:p:" + userID
}

// OutboxKey is the key of the outbox stream of a bucket: nudge:{bucket}:out.
func (l Layout) OutboxKey(bucket int) string {
	return "nudge:{" + strconv.Itoa(bucket) + "}:out"
}

// OutboxKeys returns the outbox stream of every bucket, in bucket order.
func (l Layout) OutboxKeys() []string {
	keys := make([]string, l.Buckets())
	for b := range keys {
		keys[b] = l.OutboxKey(b)
	}
	return keys
}

// TimerShards is the number of sorted sets a bucket's due users are
// spread over (by user), so that each stays small enough for Redis's
// compact encoding (zset-max-listpack-entries, 128 by default) up to
// about 2 million users with pending timers at the default 1,024
// buckets. It is part of the key layout.
const TimerShards = 16

// TimerShard is the shard of the bucket's due users the user is in.
func (l Layout) TimerShard(userID string) int {
	// The top bits of a 64-bit hash: the low bits of the bucket's 32-bit
	// hash (or of any FNV-1a of the same id) would put a bucket's users
	// in one shard.
	h := fnv.New64a()
	h.Write([]byte(userID))
	return int(h.Sum64() >> 60 % TimerShards)
}

// DueKey is the sorted set of a timer shard of a bucket: its users with
// a pending timer, scored by when the earliest is due (Unix ms):
// nudge:{bucket}:t:<shard>.
func (l Layout) DueKey(bucket, shard int) string {
	return "nudge:{" + strconv.Itoa(bucket) + "}:t:" + strconv.Itoa(shard)
}

// DueIndexKey is the sorted set of the timer shards of a bucket, each
// scored at or before the earliest due time in it (Unix ms):
// nudge:{bucket}:t. A poll reads it to find the shards with due users.
func (l Layout) DueIndexKey(bucket int) string {
	return "nudge:{" + strconv.Itoa(bucket) + "}:t"
}

// MeasureKey is the hash of the campaign counters of a bucket's users:
// nudge:{bucket}:m (measure.go).
func (l Layout) MeasureKey(bucket int) string {
	return "nudge:{" + strconv.Itoa(bucket) + "}:m"
}

// Fields of an outbox entry that name its user (erasure looks for them).
const fieldUserID = "user_id"

// ActionFields is the outbox entry of an action: flat string fields, so
// the stream is readable with redis-cli XRANGE. The payload is JSON.
func ActionFields(a *profile.Action) []any {
	payload, _ := json.Marshal(a.Payload) // map[string]string cannot fail
	f := []any{
		"action_id", a.ID,
		fieldUserID, a.UserID,
		"trigger_id", a.TriggerID,
		"channel", a.Channel,
		"template", a.Template,
		"payload", string(payload),
		"triggered_at", a.TriggeredAt.UTC().Format(time.RFC3339Nano),
		"event_id", a.EventID,
		"rules_version", a.RulesVersion,
	}
	if !a.DueAt.IsZero() {
		f = append(f, "due_at", a.DueAt.UTC().Format(time.RFC3339Nano))
	}
	return f
}

// DecodeAction parses an outbox entry's fields (ActionFields). An entry
// that is not one fails with profile.ErrCorrupt.
func DecodeAction(values map[string]any) (profile.Action, error) {
	str := func(k string) string { s, _ := values[k].(string); return s }
	a := profile.Action{
		ID:        str("action_id"),
		UserID:    str(fieldUserID),
		TriggerID: str("trigger_id"),
		Channel:   str("channel"),
		Template:  str("template"),
		EventID:   str("event_id"),

		RulesVersion: str("rules_version"),
	}
	if a.ID == "" || a.UserID == "" {
		return a, fmt.Errorf("%w: outbox entry without action_id or user_id", profile.ErrCorrupt)
	}
	if p := str("payload"); p != "" {
		if err := json.Unmarshal([]byte(p), &a.Payload); err != nil {
			return a, fmt.Errorf("%w: action %s payload: %w", profile.ErrCorrupt, a.ID, err)
		}
	}
	t, err := time.Parse(time.RFC3339Nano, str("triggered_at"))
	if err != nil {
		return a, fmt.Errorf("%w: action %s triggered_at: %w", profile.ErrCorrupt, a.ID, err)
	}
	a.TriggeredAt = t
	if d := str("due_at"); d != "" {
		if a.DueAt, err = time.Parse(time.RFC3339Nano, d); err != nil {
			return a, fmt.Errorf("%w: action %s due_at: %w", profile.ErrCorrupt, a.ID, err)
		}
	}
	return a, nil
}
