package main

import (
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/nudge-dm/nudge/client"
	nudgev1 "github.com/nudge-dm/nudge/proto/nudge/v1"
)

// categories of the generated view events.
const categories = 16

// maxStreamAttempts bounds the streams one ingest worker opens: after a
// stream fails, its unanswered batches are re-sent on a new one (their
// event ids make that safe).
const maxStreamAttempts = 5

// userPicker draws users by the configured distribution.
type userPicker func() int

func (c config) newPicker(rng *rand.Rand) userPicker {
	if c.Dist == "uniform" || c.Users == 1 {
		return func() int { return rng.IntN(c.Users) }
	}
	z := rand.NewZipf(rng, c.ZipfS, 1, uint64(c.Users-1))
	return func() int { return int(z.Uint64()) }
}

// ingestPlan is what an ingest run sends: events 0..events-1 in batches,
// paced at rate events/s when rate > 0.
type ingestPlan struct {
	events int
	rate   float64
	start  time.Time
	// event builds event i (nil: a view of a random user and category,
	// up to 30 minutes old); now is the run's start.
	event func(i int, now time.Time) *nudgev1.Event
	// sent, when set, learns when each batch's latency starts (its due
	// time when paced, else its send; see earlySlack), before the batch
	// goes out.
	sent func(req *nudgev1.StreamRequest, from time.Time)
	// actions, when set, receives the actions each response reports.
	actions func([]*nudgev1.Action)
}

// ingest sends the plan's events over cfg.Streams streams spread over
// conns. Latency is from a batch's send (paced: its due time) to its
// response.
func ingest(ctx context.Context, cfg config, conns []*client.Client, plan ingestPlan, st *stats) {
	nBatches := (plan.events + cfg.Batch - 1) / cfg.Batch
	var sched *schedule
	if plan.rate > 0 {
		s := schedule{start: plan.start, rate: plan.rate / float64(cfg.Batch), n: int64(nBatches)}
		sched = &s
	}
	var next atomic.Int64 // the next batch to build
	now := time.Now()
	var wg sync.WaitGroup
	for w := range cfg.Streams {
		wg.Go(func() {
			iw := &ingestWorker{cfg: cfg, plan: plan, st: st, conn: conns[w%len(conns)], now: now, salt: hashString(cfg.Prefix)}
			iw.run(ctx, func() (int64, bool) {
				b := next.Add(1) - 1
				return b, b < int64(nBatches)
			}, plan.events, sched)
		})
	}
	wg.Wait()
}

type ingestWorker struct {
	cfg  config
	plan ingestPlan
	st   *stats
	conn *client.Client
	now  time.Time
	salt uint64 // from the event id prefix
}

// hashString is FNV-1a.
func hashString(s string) uint64 {
	h := uint64(14695981039346656037)
	for i := range len(s) {
		h = (h ^ uint64(s[i])) * 1099511628211
	}
	return h
}

// pending is a batch sent and not answered.
type pending struct {
	req    *nudgev1.StreamRequest
	from   time.Time // latency start: the due time when paced, else sentAt
	sentAt time.Time
}

// batch builds batch b of the events 0..total-1. Its users and categories
// depend only on the prefix and b, so that a re-run with the same --prefix
// sends the same events to the same users (and they are duplicates, within
// the server's dedup horizon).
func (w *ingestWorker) batch(b int64, total int) *nudgev1.StreamRequest {
	rng := rand.New(rand.NewPCG(w.salt, uint64(b)))
	pick := w.cfg.newPicker(rng)
	lo := int(b) * w.cfg.Batch
	hi := min(lo+w.cfg.Batch, total)
	evs := make([]*nudgev1.Event, 0, hi-lo)
	for i := lo; i < hi; i++ {
		if w.plan.event != nil {
			evs = append(evs, w.plan.event(i, w.now))
			continue
		}
		evs = append(evs, &nudgev1.Event{
			EventId:    w.cfg.Prefix + "-" + strconv.Itoa(i),
			UserId:     w.cfg.userID(pick()),
			Type:       "view",
			Category:   "c" + strconv.Itoa(rng.IntN(categories)),
			OccurredAt: timestamppb.New(w.now.Add(-time.Duration(rng.Int64N(int64(30 * time.Minute))))),
		})
	}
	return &nudgev1.StreamRequest{Seq: uint64(b), Events: evs}
}

func (w *ingestWorker) run(ctx context.Context, nextBatch func() (int64, bool), total int, sched *schedule) {
	var mu sync.Mutex
	outstanding := make(map[uint64]pending)
	var resend []pending // unanswered batches of a failed stream
	done := false        // every batch taken
	for attempt := 0; attempt < maxStreamAttempts && ctx.Err() == nil; attempt++ {
		if done && len(resend) == 0 {
			return
		}
		sctx, cancel := context.WithCancel(ctx)
		stream, err := nudgev1.NewIngestServiceClient(w.conn.Conn()).Stream(sctx, grpc.WaitForReady(true))
		if err != nil {
			cancel()
			w.st.addError(status.Code(err))
			continue
		}
		slots := make(chan struct{}, w.cfg.InFlight)
		recvErr := make(chan error, 1)
		go func() {
			for {
				resp, err := stream.Recv()
				if err != nil {
					cancel() // unblocks a sender waiting for a slot
					recvErr <- err
					return
				}
				mu.Lock()
				p, ok := outstanding[resp.GetSeq()]
				delete(outstanding, resp.GetSeq())
				mu.Unlock()
				if !ok {
					continue
				}
				end := time.Now()
				if w.plan.actions != nil && len(resp.GetActions()) > 0 {
					w.plan.actions(resp.GetActions())
				}
				w.st.lat.Record(end.Sub(p.from))
				w.st.svc.Record(end.Sub(p.sentAt))
				w.st.ops.Add(1)
				w.st.events.Add(uint64(len(resp.GetResults())))
				for _, r := range resp.GetResults() {
					switch r.GetStatus() {
					case nudgev1.EventStatus_EVENT_STATUS_APPLIED:
						w.st.applied.Add(1)
					case nudgev1.EventStatus_EVENT_STATUS_DUPLICATE:
						w.st.duplicate.Add(1)
					default:
						w.st.rejected.Add(1)
					}
				}
				<-slots
			}
		}()
		// send waits for a slot and sends p. p is outstanding from the
		// start, so that a stream failing meanwhile re-sends it.
		send := func(p pending) bool {
			mu.Lock()
			outstanding[p.req.GetSeq()] = p
			mu.Unlock()
			select {
			case slots <- struct{}{}:
			case <-sctx.Done():
				return false
			}
			p.sentAt = time.Now()
			if p.from.IsZero() || p.sentAt.Before(p.from) {
				p.from = p.sentAt // see earlySlack
			}
			if w.plan.sent != nil {
				w.plan.sent(p.req, p.from)
			}
			mu.Lock()
			outstanding[p.req.GetSeq()] = p
			mu.Unlock()
			return stream.Send(p.req) == nil
		}
		ok := true
		for len(resend) > 0 && ok {
			p := resend[0]
			resend = resend[1:]
			p.from = time.Time{}
			ok = send(p)
		}
		for ok && !done {
			b, more := nextBatch()
			if !more {
				done = true
				break
			}
			req := w.batch(b, total)
			var from time.Time // unpaced: when it is sent
			if sched != nil {
				from = sched.due(b)
				if !sleepUntil(sctx, from.Add(-earlySlack)) {
					// The stream failed (or the run ended): send it on the next.
					resend = append(resend, pending{req: req})
					ok = false
					break
				}
			}
			w.st.sent.Add(uint64(len(req.Events)))
			ok = send(pending{req: req, from: from})
		}
		if ok {
			_ = stream.CloseSend() // the server answers what it read, then ends the stream
		}
		err = <-recvErr
		cancel()
		if errors.Is(err, io.EOF) && len(outstanding) == 0 {
			return
		}
		if err == nil || errors.Is(err, io.EOF) {
			err = status.Error(codes.Internal, "stream ended with batches unanswered")
		}
		if ctx.Err() != nil {
			return
		}
		w.st.addError(status.Code(err))
		mu.Lock()
		for _, p := range outstanding {
			resend = append(resend, p)
		}
		clear(outstanding)
		mu.Unlock()
	}
	if n := len(resend); n > 0 {
		// The events of n batches were never answered: the exactly-once
		// check fails on them.
		w.st.addError(codes.Aborted)
	}
}

// sleepUntil waits until t; false if ctx ended first.
func sleepUntil(ctx context.Context, t time.Time) bool {
	d := time.Until(t)
	if d <= 0 {
		return ctx.Err() == nil
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-timer.C:
		return true
	case <-ctx.Done():
		return false
	}
}
