package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/nudge-dm/nudge/client"
	"github.com/nudge-dm/nudge/profile/redisstore"
	nudgev1 "github.com/nudge-dm/nudge/proto/nudge/v1"
)

// callFunc makes one call of a paced workload for user u, with caller w's
// connection; degraded reports a degraded answer.
type callFunc func(ctx context.Context, w, u int) (degraded bool, err error)

// paced runs call from cfg.Concurrency callers for d: open loop at cfg.Rate
// (latency from each call's due time), or closed loop when cfg.Rate is 0
// (latency from the send).
//
// Latency runs from min(due time, actual send): see earlySlack.
func paced(ctx context.Context, cfg config, d time.Duration, st *stats, call callFunc) {
	start := time.Now()
	var p *pacer
	if cfg.Rate > 0 {
		p = newPacer(newSchedule(start, cfg.Rate, d), d)
	}
	end := start.Add(d)
	var started atomic.Int64
	var wg sync.WaitGroup
	for w := range cfg.Concurrency {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), uint64(start.UnixNano())))
			pick := cfg.newPicker(rng)
			for {
				var from time.Time
				if p != nil {
					due, ok := p.take(ctx)
					if !ok {
						return
					}
					from = due
				} else {
					from = time.Now()
					if ctx.Err() != nil || !from.Before(end) {
						return
					}
				}
				started.Add(1)
				sent := time.Now()
				degraded, err := call(ctx, w, pick())
				if ctx.Err() != nil {
					return // cut short, not an answer
				}
				end := time.Now()
				if sent.Before(from) {
					from = sent // see earlySlack
				}
				st.lat.Record(end.Sub(from))
				st.svc.Record(end.Sub(sent))
				st.ops.Add(1)
				if err != nil {
					st.addError(status.Code(err))
				}
				if degraded {
					st.degraded.Add(1)
				}
			}
		})
	}
	wg.Wait()
	if p != nil {
		st.notSent.Add(uint64(p.notSent(started.Load())))
	}
}

// decideCall asks GetDecision for the user on cfg.Channel.
func decideCall(cfg config, conns []*client.Client) callFunc {
	var opts []client.DecideOption
	if cfg.Budget > 0 {
		opts = append(opts, client.WithBudget(cfg.Budget))
	}
	return func(ctx context.Context, w, u int) (bool, error) {
		d, err := conns[w%len(conns)].Decide(ctx, cfg.userID(u), cfg.Channel, opts...)
		if err != nil {
			return false, err
		}
		return d.GetDegraded(), nil
	}
}

// floorCall is the floor of GetDecision: the same server's health check
// plus one Redis GET of the user's profile key, one after the other.
func floorCall(cfg config, conns []*client.Client, rdb *redis.Client) callFunc {
	health := make([]healthpb.HealthClient, len(conns))
	for i, c := range conns {
		health[i] = healthpb.NewHealthClient(c.Conn())
	}
	keys := redisstore.NewLayout(cfg.Buckets)
	return func(ctx context.Context, w, u int) (bool, error) {
		if _, err := health[w%len(health)].Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
			return false, err
		}
		err := rdb.Get(ctx, keys.ProfileKey(cfg.userID(u))).Err()
		if err != nil && !errors.Is(err, redis.Nil) {
			return false, status.Error(codes.Unavailable, "redis: "+err.Error())
		}
		return false, nil
	}
}

// seed writes one profile per user (one view event each) through
// IngestService/Publish, in batches of 1000 from 4 callers.
func seed(ctx context.Context, cfg config, conns []*client.Client) (applied int, err error) {
	const batch, callers = 1000, 4
	now := time.Now()
	var next atomic.Int64
	var total atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, callers)
	for w := range callers {
		wg.Go(func() {
			ingest := nudgev1.NewIngestServiceClient(conns[w%len(conns)].Conn())
			for {
				lo := int(next.Add(1)-1) * batch
				if lo >= cfg.Users {
					return
				}
				var evs []*nudgev1.Event
				for u := lo; u < min(lo+batch, cfg.Users); u++ {
					evs = append(evs, &nudgev1.Event{
						EventId: cfg.Prefix + "-seed-" + strconv.Itoa(u), UserId: cfg.userID(u), Type: "view",
						Category: "c" + strconv.Itoa(u%categories), OccurredAt: timestamppb.New(now.Add(-time.Minute)),
					})
				}
				resp, err := ingest.Publish(ctx, &nudgev1.PublishRequest{Events: evs})
				if err != nil {
					errs <- err
					return
				}
				for _, r := range resp.GetResults() {
					if r.GetStatus() != nudgev1.EventStatus_EVENT_STATUS_REJECTED {
						total.Add(1)
					}
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	return int(total.Load()), <-errs
}

// decideHTTPCall asks GetDecision for the user on cfg.Channel over
// nudged's HTTP/JSON listener (the Connect protocol), on keep-alive
// connections: one idle connection kept per caller.
func decideHTTPCall(cfg config) callFunc {
	hc := &http.Client{Transport: &http.Transport{
		MaxIdleConns:        cfg.Concurrency,
		MaxIdleConnsPerHost: cfg.Concurrency,
		IdleConnTimeout:     time.Minute,
	}}
	url := "http://" + cfg.HTTPAddr + "/nudge.v1.DecisionService/GetDecision"
	budget := ""
	if cfg.Budget > 0 {
		budget = fmt.Sprintf(`,"budget":"%.6fs"`, cfg.Budget.Seconds())
	}
	token := cfg.Security.Token()
	return func(ctx context.Context, _, u int) (bool, error) {
		body := fmt.Sprintf(`{"user_id":%q,"channel":%q%s}`, cfg.userID(u), cfg.Channel, budget)
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, strings.NewReader(body))
		if err != nil {
			return false, err
		}
		req.Header.Set("Content-Type", "application/json")
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := hc.Do(req)
		if err != nil {
			return false, status.Error(codes.Unavailable, err.Error())
		}
		defer resp.Body.Close()
		var out struct {
			Decision struct {
				Degraded bool `json:"degraded"`
			} `json:"decision"`
			Code    string `json:"code"`
			Message string `json:"message"`
		}
		if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
			return false, status.Errorf(codes.Internal, "HTTP %d: %v", resp.StatusCode, err)
		}
		if resp.StatusCode != http.StatusOK {
			return false, status.Errorf(codes.Unknown, "HTTP %d %s: %s", resp.StatusCode, out.Code, out.Message)
		}
		return out.Decision.Degraded, nil
	}
}
