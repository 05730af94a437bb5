package main

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/nudge-dm/nudge/client"
	nudgev1 "github.com/nudge-dm/nudge/proto/nudge/v1"
)

// maxActionEvery is the largest --action-every: a block's user views the
// trigger's category 3 times and each other category at most once, so a
// block holds at most 3 + (categories-1) events.
const maxActionEvery = 3 + categories - 1

// triggerCategory is the category a block's user views three times: the
// bundled trigger category-interest-coupon fires on the third view of one
// category within 30 minutes.
const triggerCategory = "c0"

// actionEvent is event i of the actions workload. Events come in blocks of
// every; each block is one fresh user (fresh per run too: the user id holds
// the event id prefix), so the trigger's 24 h cooldown per user and
// category never suppresses an action, and every block fires exactly one.
// The user views triggerCategory at the block's first, middle and last
// event and a different other category at each of the rest, which never
// reach 3 views.
func (c config) actionEvent(i int, now time.Time) *nudgev1.Event {
	block, pos := i/c.ActionEvery, i%c.ActionEvery
	cat := triggerCategory
	if pos != 0 && pos != c.ActionEvery/2 && pos != c.ActionEvery-1 {
		cat = "c" + strconv.Itoa(1+pos)
	}
	return &nudgev1.Event{
		EventId:    c.eventID(i),
		UserId:     c.UserPrefix + c.Prefix + "-" + strconv.Itoa(block),
		Type:       "view",
		Category:   cat,
		OccurredAt: timestamppb.New(now),
	}
}

// eventID is the id of ingest event i; eventIndex inverts it.
func (c config) eventID(i int) string { return c.Prefix + "-" + strconv.Itoa(i) }

// eventIndex is i for an id eventID(i) of this run; false for any other id
// (an action left in the outbox by an earlier run).
func (c config) eventIndex(id string) (int, bool) {
	rest, ok := strings.CutPrefix(id, c.Prefix+"-")
	if !ok {
		return 0, false
	}
	i, err := strconv.Atoi(rest)
	return i, err == nil && i >= 0
}

// actionStats is the actions workload's side of the subscriber.
type actionStats struct {
	// sentAt[i] is when event i's batch went out (UnixNano; its due time
	// when paced, see earlySlack), 0 until then. A slice indexed by the
	// event number instead of a map keyed by event id: the ingest streams
	// write it and the subscribers read it without a lock, and the event
	// id is prefix-i anyway.
	sentAt []atomic.Int64
	st     *stats  // lat: event sent -> action received by a subscriber; ops: actions received
	fired  counter // actions of this run the ingest responses reported
	// Deliveries to the subscribers: distinct actions of this run, all
	// deliveries of them, and actions of other runs (drained and acked).
	mu          sync.Mutex
	seen        map[string]struct{}
	received    counter
	deliveries  counter
	foreign     counter
	unsent      counter // actions for an event with no recorded send
	subErrors   counter
	lastSubErr  atomic.Pointer[string]
	firedByResp sync.Map // action id -> struct{}: dedups a re-sent batch's actions
}

// actionsJSON is the actions workload's own result.
type actionsJSON struct {
	// Blocks is the actions the events were built to fire (one per whole
	// block sent); Fired the actions of this run the ingest responses
	// reported; Received the distinct ones the subscribers got.
	Blocks      uint64  `json:"blocks"`
	Fired       uint64  `json:"fired"`
	Received    uint64  `json:"received"`
	Missing     uint64  `json:"missing"` // fired, never received within the grace
	Deliveries  uint64  `json:"deliveries"`
	Foreign     uint64  `json:"foreign"` // actions of other runs, acked and ignored
	Subscribers int     `json:"subscribers"`
	Group       string  `json:"group"`
	GraceWaitS  float64 `json:"grace_wait_s"` // how long the stragglers took
	SubErrors   uint64  `json:"subscribe_errors"`
	LastSubErr  string  `json:"last_subscribe_error,omitempty"`
	// ActionsPerSec is Received over the sending time.
	ActionsPerSec float64 `json:"actions_per_sec"`
}

// runActions sends --ingest-rate events/s for --duration while
// --subscribers members of --group receive and acknowledge the actions
// they fire, and measures each action's event-to-action latency: its
// arrival at a subscriber minus the send of the event that fired it.
func runActions(ctx context.Context, cfg config, conns []*client.Client, ingestStats *stats, stderr io.Writer) (ingestRes, actionsRes workloadJSON, aj actionsJSON) {
	events := cfg.mixedEvents()
	actStats := newStats("actions")
	as := &actionStats{sentAt: make([]atomic.Int64, events), st: actStats, seen: make(map[string]struct{})}
	subCtx, stopSubs := context.WithCancel(ctx)
	defer stopSubs()
	var subs sync.WaitGroup
	for s := range cfg.Subscribers {
		subs.Go(func() {
			cl := conns[s%len(conns)]
			err := cl.Subscribe(subCtx, cfg.Group, as.handler(cfg),
				client.Consumer("nudge-bench-"+strconv.Itoa(s)),
				client.OnSubscribeError(func(err error) {
					as.subErrors.Add(1)
					msg := err.Error()
					as.lastSubErr.Store(&msg)
				}))
			if err != nil {
				as.subErrors.Add(1)
				msg := err.Error()
				as.lastSubErr.Store(&msg)
			}
		})
	}
	plan := ingestPlan{
		events: events, rate: cfg.IngestRate, start: time.Now(),
		event: cfg.actionEvent,
		sent: func(req *nudgev1.StreamRequest, from time.Time) {
			for _, ev := range req.GetEvents() {
				if i, ok := cfg.eventIndex(ev.GetEventId()); ok && i < len(as.sentAt) {
					as.sentAt[i].CompareAndSwap(0, from.UnixNano()) // a re-send keeps the first
				}
			}
		},
		actions: func(acts []*nudgev1.Action) {
			for _, a := range acts {
				if _, ok := cfg.eventIndex(a.GetEventId()); !ok {
					continue
				}
				if _, dup := as.firedByResp.LoadOrStore(a.GetActionId(), struct{}{}); !dup {
					as.fired.Add(1)
				}
			}
		},
	}
	var ingestElapsed time.Duration
	withProgress(cfg, stderr, func() {
		start := time.Now()
		ingest(ctx, cfg, conns, plan, ingestStats)
		ingestElapsed = time.Since(start)
	}, ingestStats, actStats)
	// Stragglers: wait until every fired action arrived, at most --grace.
	graceStart := time.Now()
	for as.received.Load() < as.fired.Load() && time.Since(graceStart) < cfg.Grace && ctx.Err() == nil {
		time.Sleep(5 * time.Millisecond)
	}
	graceWait := time.Since(graceStart)
	stopSubs()
	subs.Wait()

	actionsRes = actStats.summary(ingestElapsed)
	aj = actionsJSON{
		Blocks: uint64(events / cfg.ActionEvery), Fired: as.fired.Load(), Received: as.received.Load(),
		Deliveries: as.deliveries.Load(), Foreign: as.foreign.Load(),
		Subscribers: cfg.Subscribers, Group: cfg.Group, GraceWaitS: graceWait.Seconds(),
		SubErrors: as.subErrors.Load(),
	}
	if aj.Fired > aj.Received {
		aj.Missing = aj.Fired - aj.Received
	}
	if p := as.lastSubErr.Load(); p != nil {
		aj.LastSubErr = *p
	}
	if s := ingestElapsed.Seconds(); s > 0 {
		aj.ActionsPerSec = float64(aj.Received) / s
	}
	if n := as.unsent.Load(); n > 0 { // a bug of ours, not the server's: fails --verify
		actionsRes.Errors["no_send_time"] = n
		actionsRes.ErrorTotal += n
	}
	return ingestStats.summary(ingestElapsed), actionsRes, aj
}

// handler records each action of this run once (a redelivery is counted,
// not timed again) and acknowledges everything, other runs' actions too,
// so that they do not come back.
func (as *actionStats) handler(cfg config) client.Handler {
	return func(_ context.Context, a *nudgev1.Action, _ uint32) error {
		now := time.Now()
		i, ok := cfg.eventIndex(a.GetEventId())
		if !ok {
			as.foreign.Add(1)
			return nil
		}
		as.deliveries.Add(1)
		as.mu.Lock()
		_, dup := as.seen[a.GetActionId()]
		as.seen[a.GetActionId()] = struct{}{}
		as.mu.Unlock()
		if dup {
			return nil
		}
		as.received.Add(1)
		as.st.ops.Add(1)
		var sent int64
		if i < len(as.sentAt) {
			sent = as.sentAt[i].Load()
		}
		if sent == 0 {
			as.unsent.Add(1)
			return nil
		}
		d := now.Sub(time.Unix(0, sent))
		as.st.lat.Record(d)
		as.st.svc.Record(d)
		return nil
	}
}

// actionChecks are --verify's checks of the actions workload: every block
// fired its action and every fired action was delivered.
func actionChecks(aj actionsJSON) []check {
	return []check{
		{Name: "actions fired", OK: aj.Fired == aj.Blocks,
			Detail: fmt.Sprintf("the ingest responses reported %d actions, the events were built to fire %d", aj.Fired, aj.Blocks)},
		{Name: "actions delivered", OK: aj.Missing == 0 && aj.Received == aj.Fired,
			Detail: fmt.Sprintf("%d of %d fired actions received within the grace (%d missing, %d deliveries)", aj.Received, aj.Fired, aj.Missing, aj.Deliveries)},
	}
}
