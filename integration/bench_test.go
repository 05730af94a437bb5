package integration

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/nudge-dm/nudge/profile/redisstore"
	nudgev1 "github.com/nudge-dm/nudge/proto/nudge/v1"
	"github.com/nudge-dm/nudge/server"
)

// BenchmarkIngestStream measures ingest through IngestService/Stream into a
// real redis-server, everything on this machine: 4 streams, batches of 500
// events, users drawn uniformly from 100,000 (or Zipf s=1.1), the bundled
// rules. One op is one batch; events/s is the figure to read.
// The -tokens variant runs the same with bearer tokens and a (never
// reached) rate limit, for the cost of the security interceptors.
func BenchmarkIngestStream(b *testing.B) {
	for _, dist := range []string{"uniform", "zipf"} {
		b.Run(dist, func(b *testing.B) { benchIngest(b, dist, false) })
	}
	b.Run("uniform-tokens", func(b *testing.B) { benchIngest(b, "uniform", true) })
}

// benchToken is the token of the secured benchmark variants: every role,
// rate limits far above what the machine reaches (so the limiter runs and
// never refuses).
var benchToken = server.Token{
	Name: "bench", Secret: "bench-secret-0123456789",
	Roles:           []server.Role{server.RoleIngest, server.RoleDecide, server.RoleSubscribe, server.RoleAdmin},
	Groups:          []string{"*"},
	EventsPerSecond: 1e9, DecisionsPerSecond: 1e9,
}

// benchEnv starts the benchmark's server, with tokens when secured, and
// returns the context its calls use.
func benchEnv(b *testing.B, secured bool) (*env, context.Context) {
	if !secured {
		return newEnv(b, redisstore.Options{}), context.Background()
	}
	e := newEnvConfig(b, redisstore.Options{}, server.Config{Tokens: []server.Token{benchToken}})
	return e, metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+benchToken.Secret)
}

func benchIngest(b *testing.B, dist string, secured bool) {
	const streams, batchSize, users = 4, 500, 100_000
	e, ctx := benchEnv(b, secured)
	var next atomic.Int64
	var sent atomic.Int64
	now := time.Now()
	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	for s := range streams {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(s), 42))
			zipf := rand.NewZipf(rng, 1.1, 1, users-1)
			stream, err := e.ingest.Stream(ctx)
			if err != nil {
				b.Error(err)
				return
			}
			inflight := make(chan struct{}, 8)
			done := make(chan struct{})
			go func() {
				defer close(done)
				for {
					resp, err := stream.Recv()
					if err != nil {
						return
					}
					sent.Add(int64(len(resp.Results)))
					<-inflight
				}
			}()
			for next.Add(1) <= int64(b.N) {
				batch := make([]*nudgev1.Event, batchSize)
				for i := range batch {
					u := rng.IntN(users)
					if dist == "zipf" {
						u = int(zipf.Uint64())
					}
					batch[i] = &nudgev1.Event{
						EventId:    fmt.Sprintf("s%d-%d-%d", s, next.Load(), i),
						UserId:     fmt.Sprintf("user-%d", u),
						Type:       "view",
						Category:   fmt.Sprintf("c%d", rng.IntN(16)),
						OccurredAt: timestamppb.New(now.Add(-time.Duration(rng.IntN(1800)) * time.Second)),
					}
				}
				inflight <- struct{}{}
				if err := stream.Send(&nudgev1.StreamRequest{Seq: uint64(next.Load()), Events: batch}); err != nil {
					b.Error(err)
					return
				}
			}
			for range cap(inflight) {
				inflight <- struct{}{}
			}
			_ = stream.CloseSend()
			<-done
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	b.ReportMetric(float64(sent.Load())/elapsed.Seconds(), "events/s")
	st := e.store.Stats()
	b.ReportMetric(float64(st.Conflicts)/float64(max(st.Transactions, 1)), "conflicts/txn")
}

// BenchmarkGetDecision measures GetDecision on existing profiles through
// gRPC on loopback, with 16 concurrent callers; open, and with a bearer
// token checked and rate-limited on every call.
func BenchmarkGetDecision(b *testing.B) {
	b.Run("open", func(b *testing.B) { benchGetDecision(b, false) })
	b.Run("tokens", func(b *testing.B) { benchGetDecision(b, true) })
}

func benchGetDecision(b *testing.B, secured bool) {
	e, ctx := benchEnv(b, secured)
	const users = 1000
	var events []*nudgev1.Event
	for u := range users {
		for i := range 5 {
			events = append(events, &nudgev1.Event{
				EventId: fmt.Sprintf("d%d-%d", u, i), UserId: fmt.Sprintf("user-%d", u), Type: "view", Category: "phones",
				OccurredAt: timestamppb.New(time.Now().Add(-time.Duration(i) * time.Minute)),
			})
		}
	}
	for i := 0; i < len(events); i += 1000 {
		if _, err := e.ingest.Publish(ctx, &nudgev1.PublishRequest{Events: events[i:min(i+1000, len(events))]}); err != nil {
			b.Fatal(err)
		}
	}
	var degraded atomic.Int64
	b.SetParallelism(8) // 2 cores x 8 = 16 callers
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			i++
			resp, err := e.decide.GetDecision(ctx, &nudgev1.GetDecisionRequest{UserId: fmt.Sprintf("user-%d", i%users), Channel: "sms"})
			if err != nil {
				b.Error(err)
				return
			}
			if resp.Decision.Degraded {
				degraded.Add(1)
			}
		}
	})
	b.ReportMetric(float64(degraded.Load())/float64(b.N), "degraded/op")
}

// BenchmarkGetDecisionReserve measures GetDecision with reserve: true (a
// WATCH/MULTI transaction per call, writing the reservation), 16
// concurrent callers over 1,000 users, a fresh idempotency key per call.
func BenchmarkGetDecisionReserve(b *testing.B) {
	e := newEnv(b, redisstore.Options{})
	ctx := context.Background()
	var n atomic.Int64
	b.SetParallelism(8)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			i := n.Add(1)
			resp, err := e.decide.GetDecision(ctx, &nudgev1.GetDecisionRequest{
				UserId: fmt.Sprintf("user-%d", i%1000), Channel: "web", Reserve: true, IdempotencyKey: fmt.Sprintf("k%d", i),
			})
			if err != nil {
				b.Error(err)
				return
			}
			if resp.Decision.Degraded {
				b.Error("degraded under a 1 s budget")
				return
			}
		}
	})
}
