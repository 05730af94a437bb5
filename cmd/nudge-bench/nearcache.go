package main

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/nudge-dm/nudge/client"
	nudgev1 "github.com/nudge-dm/nudge/proto/nudge/v1"
)

// This file holds the near-cache's figures (issue 17): a bare grpc-go
// health server whose CPU per call is the floor of nudged's CPU per
// decision, the health workload that drives it, and freshness: how long
// after an instance acknowledged an event another instance decides on it.

// healthCall is a gRPC health check alone.
func healthCall(conns []*client.Client) callFunc {
	health := make([]healthpb.HealthClient, len(conns))
	for i, c := range conns {
		health[i] = healthpb.NewHealthClient(c.Conn())
	}
	return func(ctx context.Context, w, _ int) (bool, error) {
		_, err := health[w%len(health)].Check(ctx, &healthpb.HealthCheckRequest{})
		return false, err
	}
}

// serveHealth serves the standard health service on a bare grpc-go server
// (no interceptor, no stats handler) at addr until ctx ends: the floor of
// what a unary call costs a server in CPU.
func serveHealth(ctx context.Context, addr string, stderr io.Writer) error {
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	s := grpc.NewServer()
	healthpb.RegisterHealthServer(s, health.NewServer())
	fmt.Fprintf(stderr, "health server listening on %s\n", lis.Addr())
	go func() {
		<-ctx.Done()
		s.Stop()
	}()
	if err := s.Serve(lis); err != nil && ctx.Err() == nil {
		return err
	}
	return nil
}

// runFreshness measures, for --events events one after the other, the time
// from --addr's acknowledgement of an event to the first decision of
// --read-addr that is on the profile it wrote, asked without
// min_profile_version as fast as answers come (a decision takes a few
// hundred microseconds, which bounds the figure's resolution). Users are
// drawn uniformly; each first gets a decision from --read-addr, so that
// its near-cache holds the version the event makes stale.
func runFreshness(ctx context.Context, cfg config, conns, readConns []*client.Client, st *stats) error {
	ingest := nudgev1.NewIngestServiceClient(conns[0].Conn())
	decide := nudgev1.NewDecisionServiceClient(readConns[0].Conn())
	rng := rand.New(rand.NewPCG(1, uint64(time.Now().UnixNano())))
	start := time.Now()
	for i := 0; i < cfg.Events && ctx.Err() == nil && time.Since(start) < cfg.Duration; i++ {
		user := cfg.userID(rng.IntN(cfg.Users))
		ask := func() (*nudgev1.GetDecisionResponse, error) {
			return decide.GetDecision(ctx, &nudgev1.GetDecisionRequest{UserId: user, Channel: cfg.Channel})
		}
		if _, err := ask(); err != nil {
			st.addError(status.Code(err))
			continue
		}
		e := &nudgev1.Event{
			EventId: fmt.Sprintf("%s-fresh-%d", cfg.Prefix, i), UserId: user, Type: "view", Category: "phones",
			OccurredAt: timestamppb.Now(),
		}
		resp, err := ingest.Publish(ctx, &nudgev1.PublishRequest{Events: []*nudgev1.Event{e}})
		if err != nil {
			st.addError(status.Code(err))
			continue
		}
		acked := time.Now()
		want := resp.GetResults()[0].GetProfileVersion()
		st.events.Add(1)
		for {
			d, err := ask()
			if err != nil {
				st.addError(status.Code(err))
				break
			}
			if d.GetDecision().GetDegraded() {
				st.degraded.Add(1)
			}
			if d.GetProfileVersion() >= want {
				st.lat.Record(time.Since(acked))
				st.ops.Add(1)
				break
			}
			if time.Since(acked) > 10*time.Second {
				return fmt.Errorf("freshness: %s acknowledged at version %d, still decided at %d after 10s", user, want, d.GetProfileVersion())
			}
		}
	}
	return nil
}
