package main

import (
	"context"
	"fmt"
	"hash/fnv"
	"io"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/nudge-dm/nudge/client"
	"github.com/nudge-dm/nudge/profile"
	"github.com/nudge-dm/nudge/profile/redisstore"
	nudgev1 "github.com/nudge-dm/nudge/proto/nudge/v1"
)

// The timers workload measures journeys: --timers add_to_cart events of
// fresh users are sent as fast as the server takes them, each dated so
// that the bundled cart-abandoned journey (--timer-wait after the event)
// is due --timer-lead after the start plus i/--timer-rate: the timers
// then come due at --timer-rate per second. While they fire, views are
// ingested at --ingest-rate. A subscriber receives the journey's actions;
// each action's lateness is its triggered_at (when nudged fired it) minus
// its due_at, both stamped by the server. With --redis-addr, the bytes of
// Redis per pending timer are measured once every timer is scheduled and
// none is due: the due index's keys (MEMORY USAGE) over the pending users,
// plus the timer's share of its profile (the encoded profile with and
// without its timers, over a sample).

// timersJSON is the timers workload's own result.
type timersJSON struct {
	Timers    int     `json:"timers"`
	Scheduled uint64  `json:"scheduled"` // journeys the ingest responses applied
	Fired     uint64  `json:"fired"`     // distinct actions received
	Late      uint64  `json:"late_over_1s"`
	FireRate  float64 `json:"fire_rate"` // fired over (last fire - first due)
	// ScheduleS is how long scheduling took; the first timer is due at
	// --timer-lead.
	ScheduleS float64 `json:"schedule_s"`
	// Bytes of Redis per pending timer (with --redis-addr): the due
	// index's, and the timers' share of their profiles.
	IndexBytes   float64 `json:"index_bytes_per_timer,omitempty"`
	ProfileBytes float64 `json:"profile_bytes_per_timer,omitempty"`
	BytesPer     float64 `json:"bytes_per_timer,omitempty"`
	Pending      int64   `json:"pending_users,omitempty"`
}

// Ids of the timers workload are short, as real ids often are (14 bytes
// for a million timers), since a pending timer stores both: the user's in
// the due index, the event's for the action's event_id. They are unique
// per run by the base-36 run tag (from --prefix), not by --user-prefix.
func (c config) timerUser(i int) string  { return "u" + c.timerTag() + strconv.FormatInt(int64(i), 36) }
func (c config) timerEvent(i int) string { return "e" + c.timerTag() + strconv.FormatInt(int64(i), 36) }

// timerTag is 8 base-36 characters of the run's prefix, then a dash.
func (c config) timerTag() string {
	h := fnv.New64a()
	h.Write([]byte(c.Prefix))
	t := strconv.FormatUint(h.Sum64()|1<<63, 36) // 13 characters
	return t[len(t)-8:] + "-"
}

// runTimers schedules the timers, then ingests views while they fire.
func runTimers(ctx context.Context, cfg config, conns []*client.Client, rdb *redis.Client, ingestStats *stats, stderr io.Writer) (ingestRes, lateRes workloadJSON, tj timersJSON, err error) {
	start := time.Now()
	firstDue := start.Add(cfg.TimerLead)
	tj.Timers = cfg.Timers
	lateStats := newStats("timer-lateness")

	// The subscriber first, so that nothing fired is missed.
	var mu sync.Mutex
	seen := make(map[string]struct{})
	var fired, late atomic.Uint64
	var lastFire atomic.Int64
	subCtx, stopSub := context.WithCancel(ctx)
	defer stopSub()
	var sub sync.WaitGroup
	sub.Go(func() {
		_ = conns[0].Subscribe(subCtx, cfg.Group, func(_ context.Context, a *nudgev1.Action, _ uint32) error {
			if a.GetTriggerId() != cfg.TimerTrigger || !strings.HasPrefix(a.GetEventId(), "e"+cfg.timerTag()) {
				return nil
			}
			mu.Lock()
			_, dup := seen[a.GetActionId()]
			seen[a.GetActionId()] = struct{}{}
			mu.Unlock()
			if dup {
				return nil
			}
			fired.Add(1)
			lateStats.ops.Add(1)
			at := a.GetTriggeredAt().AsTime()
			d := at.Sub(a.GetDueAt().AsTime())
			if d > time.Second {
				late.Add(1)
			}
			lateStats.lat.Record(max(d, 0))
			lateStats.svc.Record(max(d, 0))
			for {
				old := lastFire.Load()
				if at.UnixNano() <= old || lastFire.CompareAndSwap(old, at.UnixNano()) {
					break
				}
			}
			return nil
		}, client.Consumer("nudge-bench-timers"))
	})

	// Schedule.
	var scheduled atomic.Uint64
	schedStats := newStats("schedule")
	plan := ingestPlan{
		events: cfg.Timers,
		event: func(i int, _ time.Time) *nudgev1.Event {
			due := firstDue.Add(time.Duration(float64(i) / cfg.TimerRate * float64(time.Second)))
			return &nudgev1.Event{
				EventId: cfg.timerEvent(i), UserId: cfg.timerUser(i), Type: "add_to_cart",
				ItemId: "sku-" + strconv.Itoa(i%1000), OccurredAt: timestamppb.New(due.Add(-cfg.TimerWait)),
			}
		},
	}
	withProgress(cfg, stderr, func() { ingest(ctx, cfg, conns, plan, schedStats) }, schedStats)
	scheduled.Store(schedStats.applied.Load())
	tj.Scheduled, tj.ScheduleS = scheduled.Load(), time.Since(start).Seconds()
	if rdb != nil && time.Now().Before(firstDue) {
		tj.IndexBytes, tj.ProfileBytes, tj.Pending, err = timerBytes(ctx, cfg, rdb)
		if err != nil {
			return ingestRes, lateRes, tj, err
		}
		if tj.Pending > 0 {
			tj.BytesPer = tj.IndexBytes + tj.ProfileBytes
		}
	}

	// Fire, with views ingested meanwhile.
	window := time.Duration(float64(cfg.Timers) / cfg.TimerRate * float64(time.Second))
	end := firstDue.Add(window)
	if d := time.Until(firstDue); d > 0 {
		select {
		case <-time.After(d):
		case <-ctx.Done():
		}
	}
	ingStart := time.Now()
	views := max(int(cfg.IngestRate*time.Until(end).Seconds()), 1)
	withProgress(cfg, stderr, func() {
		ingest(ctx, cfg, conns, ingestPlan{events: views, rate: cfg.IngestRate, start: ingStart}, ingestStats)
	}, ingestStats, lateStats)
	ingElapsed := time.Since(ingStart)
	deadline := end.Add(cfg.Grace)
	for fired.Load() < scheduled.Load() && time.Now().Before(deadline) && ctx.Err() == nil {
		time.Sleep(10 * time.Millisecond)
	}
	stopSub()
	sub.Wait()
	tj.Fired, tj.Late = fired.Load(), late.Load()
	if span := time.Unix(0, lastFire.Load()).Sub(firstDue); span > 0 {
		tj.FireRate = float64(tj.Fired) / span.Seconds()
	}
	return ingestStats.summary(ingElapsed), lateStats.summary(window), tj, nil
}

// timerBytes measures the Redis bytes of the pending timers: the due
// index's keys, and over a sample of the run's users, the encoded bytes
// their timers add to their profiles.
func timerBytes(ctx context.Context, cfg config, rdb *redis.Client) (index, perProfile float64, pending int64, err error) {
	l := redisstore.NewLayout(cfg.Buckets)
	var keys []string
	for b := range l.Buckets() {
		keys = append(keys, l.DueIndexKey(b))
		for k := range redisstore.TimerShards {
			keys = append(keys, l.DueKey(b, k))
		}
	}
	mem := make([]*redis.IntCmd, len(keys))
	card := make([]*redis.IntCmd, len(keys))
	if _, err := rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, k := range keys {
			mem[i] = p.MemoryUsage(ctx, k)
			card[i] = p.ZCard(ctx, k)
		}
		return nil
	}); err != nil && err != redis.Nil {
		return 0, 0, 0, fmt.Errorf("measure the due index: %w", err)
	}
	var bytes int64
	for i, k := range keys {
		bytes += mem[i].Val()
		if strings.Contains(k, "}:t:") {
			pending += card[i].Val()
		}
	}
	if pending == 0 {
		return 0, 0, 0, nil
	}
	const sample = 1000
	var with, without, timers int
	for i := 0; i < cfg.Timers && i < sample*max(cfg.Timers/sample, 1); i += max(cfg.Timers/sample, 1) {
		raw, err := rdb.Get(ctx, l.ProfileKey(cfg.timerUser(i))).Bytes()
		if err != nil {
			continue
		}
		p, err := profile.Decode(raw)
		if err != nil || len(p.Timers) == 0 {
			continue
		}
		with += len(raw)
		timers += len(p.Timers)
		p.Timers = nil
		without += len(profile.Encode(p))
	}
	if timers > 0 {
		perProfile = float64(with-without) / float64(timers)
	}
	return float64(bytes) / float64(pending), perProfile, pending, nil
}

// timerChecks are --verify's checks of the timers workload.
func timerChecks(tj timersJSON) []check {
	return []check{
		{Name: "timers scheduled", OK: tj.Scheduled == uint64(tj.Timers),
			Detail: fmt.Sprintf("%d of %d add_to_cart events applied", tj.Scheduled, tj.Timers)},
		{Name: "timers fired", OK: tj.Fired == tj.Scheduled,
			Detail: fmt.Sprintf("%d of %d journeys fired their action within the grace", tj.Fired, tj.Scheduled)},
	}
}
