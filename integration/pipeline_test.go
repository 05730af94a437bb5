package integration

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/nudge-dm/nudge/delivery"
	"github.com/nudge-dm/nudge/profile"
	"github.com/nudge-dm/nudge/profile/redisstore"
	nudgev1 "github.com/nudge-dm/nudge/proto/nudge/v1"
)

// seedTrigger is the trigger of examples/rules.yaml for the seed's scenario:
// 3 views of one category in 30 minutes -> SMS coupon for that category.
const seedTrigger = "category-interest-coupon"

const (
	applied   = nudgev1.EventStatus_EVENT_STATUS_APPLIED
	duplicate = nudgev1.EventStatus_EVENT_STATUS_DUPLICATE
	rejected  = nudgev1.EventStatus_EVENT_STATUS_REJECTED
)

// Acceptance (1): the seed scenario triggers exactly one action, and the
// action is in the outbox stream.
func TestSeedScenarioTriggersOneActionInOutbox(t *testing.T) {
	forBackends(t, func(t *testing.T, b backend) {
		e := b.newEnv(t, redisstore.Options{})
		const user = "shopper-1"
		stream, err := e.ingest.Stream(ctxT(t))
		if err != nil {
			t.Fatal(err)
		}
		// Five views of phones in 25 minutes, one batch each, and one laptop
		// view: the third phone view fires the coupon, the cooldown holds the
		// fourth and fifth.
		events := []*nudgev1.Event{
			ev(user, "view", "phones", 25*time.Minute),
			ev(user, "view", "laptops", 22*time.Minute),
			ev(user, "view", "phones", 20*time.Minute),
			ev(user, "view", "phones", 10*time.Minute),
			ev(user, "view", "phones", 5*time.Minute),
			ev(user, "view", "phones", time.Minute),
		}
		for i, ev := range events {
			if err := stream.Send(&nudgev1.StreamRequest{Seq: uint64(i + 1), Events: []*nudgev1.Event{ev}}); err != nil {
				t.Fatal(err)
			}
			// Wait for each answer, so the events apply in this order.
			resp, err := stream.Recv()
			if err != nil {
				t.Fatal(err)
			}
			if resp.Seq != uint64(i+1) || len(resp.Results) != 1 {
				t.Fatalf("response %d: seq %d with %d results", i+1, resp.Seq, len(resp.Results))
			}
			wantStatus(t, resp.Results[0], applied)
			wantActions := 0
			if i == 3 {
				wantActions = 1
			}
			if len(resp.Actions) != wantActions {
				t.Fatalf("event %d (%s): %d actions, want %d: %v", i+1, ev.Category, len(resp.Actions), wantActions, resp.Actions)
			}
			if wantActions == 1 {
				a := resp.Actions[0]
				if a.TriggerId != seedTrigger || a.Channel != "sms" || a.Payload["category"] != "phones" || a.EventId != ev.EventId || a.UserId != user {
					t.Errorf("action = %v", a)
				}
			}
		}
		if err := stream.CloseSend(); err != nil {
			t.Fatal(err)
		}

		out := e.outbox(t, user)
		if len(out) != 1 {
			t.Fatalf("outbox has %d entries, want 1: %+v", len(out), out)
		}
		want := profile.ActionID(user, events[3].EventId, seedTrigger)
		if out[0].ID != want || out[0].UserID != user || out[0].Payload["category"] != "phones" {
			t.Errorf("outbox entry %+v, want action %s", out[0], want)
		}
	})
}

// Acceptance (2): 50 goroutines publishing to one hot user concurrently,
// through 5 nudge servers sharing one Redis, lose no update, and the
// conflicts were really retried. (One server serialises its own writes to a
// user, so WATCH conflicts come from the other servers, as in production.)
func TestHotUserConcurrentWritersLoseNothing(t *testing.T) {
	forBackends(t, func(t *testing.T, b backend) {
		e := b.newEnv(t, redisstore.Options{MaxAttempts: 10000})
		const user, writers, perWriter, servers = "hot-user", 50, 20, 5
		ingest := []nudgev1.IngestServiceClient{e.ingest}
		stores := []*redisstore.Store{e.store}
		for range servers - 1 {
			other := e.addServer(t, redisstore.Options{MaxAttempts: 10000})
			ingest = append(ingest, other.ingest)
			stores = append(stores, other.store)
		}
		var wg sync.WaitGroup
		errs := make(chan error, writers)
		for w := range writers {
			client := ingest[w%servers]
			wg.Go(func() {
				for i := range perWriter {
					ev := ev(user, "click", fmt.Sprintf("c%d", i%3), time.Duration(w%30)*time.Minute)
					resp, err := client.Publish(ctxT(t), &nudgev1.PublishRequest{Events: []*nudgev1.Event{ev}})
					if err != nil {
						errs <- err
						return
					}
					if resp.Results[0].Status != applied {
						errs <- fmt.Errorf("event %s: %s %s", ev.EventId, resp.Results[0].Status, resp.Results[0].Reason)
						return
					}
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		p := e.profile(t, user)
		if got := p.Totals["click"]; got != writers*perWriter {
			t.Errorf("click total = %d, want %d", got, writers*perWriter)
		}
		if got := count(t, p, "click", "", time.Hour); got != writers*perWriter {
			t.Errorf("click count over 1h = %d, want %d", got, writers*perWriter)
		}
		var st redisstore.Stats
		for _, s := range stores {
			x := s.Stats()
			st.Transactions += x.Transactions
			st.Conflicts += x.Conflicts
			st.Exhausted += x.Exhausted
		}
		// A server's shard merges the calls queued for the user while it
		// commits: the version counts commits, at most one per event.
		if p.Version != st.Transactions || p.Version > writers*perWriter {
			t.Errorf("version = %d after %d commits, want one per commit and at most %d", p.Version, st.Transactions, writers*perWriter)
		}
		if st.Conflicts == 0 {
			t.Errorf("no WATCH conflict among %d concurrent writers on %d servers: the retry path was not exercised", writers, servers)
		}
		if st.Exhausted != 0 {
			t.Errorf("%d users exhausted their retries", st.Exhausted)
		}
		t.Logf("transactions %d, conflicts retried %d", st.Transactions, st.Conflicts)
	})
}

// Acceptance (3): re-sending a batch yields DUPLICATE for every event and
// changes nothing.
func TestResentBatchIsDuplicateAndChangesNothing(t *testing.T) {
	forBackends(t, func(t *testing.T, b backend) {
		e := b.newEnv(t, redisstore.Options{})
		users := []string{"u-a", "u-b", "u-c"}
		var batch []*nudgev1.Event
		for i := range 12 {
			batch = append(batch, ev(users[i%3], "view", "phones", time.Duration(i)*time.Minute))
		}
		first := e.publish(t, batch...)
		for _, r := range first.Results {
			wantStatus(t, r, applied)
		}
		before := map[string]string{}
		for _, u := range users {
			before[u] = e.rdb.Get(ctxT(t), e.store.Layout().ProfileKey(u)).Val()
		}
		outboxBefore := len(e.outbox(t, "u-a")) + len(e.outbox(t, "u-b")) + len(e.outbox(t, "u-c"))

		again := e.publish(t, batch...)
		for i, r := range again.Results {
			wantStatus(t, r, duplicate)
			if r.ProfileVersion != first.Results[i].ProfileVersion {
				t.Errorf("event %s: version %d after re-send, %d before", r.EventId, r.ProfileVersion, first.Results[i].ProfileVersion)
			}
		}
		if len(again.Actions) != 0 {
			t.Errorf("re-send triggered %d actions", len(again.Actions))
		}
		for _, u := range users {
			if after := e.rdb.Get(ctxT(t), e.store.Layout().ProfileKey(u)).Val(); after != before[u] {
				t.Errorf("profile of %s changed on re-send", u)
			}
			if got := e.profile(t, u).Totals["view"]; got != 4 {
				t.Errorf("%s: view total %d, want 4", u, got)
			}
		}
		if n := len(e.outbox(t, "u-a")) + len(e.outbox(t, "u-b")) + len(e.outbox(t, "u-c")); n != outboxBefore {
			t.Errorf("outbox grew from %d to %d on re-send", outboxBefore, n)
		}
	})
}

// Acceptance (4): out-of-order events land in their event-time window, and
// triggers judge each event at its own time.
func TestOutOfOrderEventsLandInTheirWindow(t *testing.T) {
	forBackends(t, func(t *testing.T, b backend) {
		e := b.newEnv(t, redisstore.Options{})
		const user = "late-user"
		// Two views about an hour ago, then one that arrives late but
		// happened between them: at its own time only 2 views are in its
		// 30 minutes, but at the later view's time all 3 are, so it fires
		// the coupon (as it would have in arrival order), once. The first
		// is 59 minutes old, not 60: the 1h count read below, a moment
		// later, must not lose it to the minute boundary.
		later := ev(user, "view", "tv", 56*time.Minute)
		r := e.publish(t, ev(user, "view", "tv", 59*time.Minute), later)
		late := e.publish(t, ev(user, "view", "tv", 58*time.Minute))
		recent := e.publish(t, ev(user, "view", "tv", 2*time.Minute))
		for _, resp := range []*nudgev1.PublishResponse{r, late, recent} {
			for _, res := range resp.Results {
				wantStatus(t, res, applied)
			}
		}
		if len(r.Actions) != 0 || len(recent.Actions) != 0 {
			t.Errorf("unexpected actions: %v %v", r.Actions, recent.Actions)
		}
		if len(late.Actions) != 1 || late.Actions[0].EventId != late.Results[0].EventId {
			t.Fatalf("late view completing 3 views in 30 minutes: actions %v, want one fired by %s", late.Actions, late.Results[0].EventId)
		}
		// Fired at the time the pattern held: the later view's (profiles keep
		// event times to the millisecond).
		if at, want := late.Actions[0].TriggeredAt.AsTime(), later.OccurredAt.AsTime().Truncate(time.Millisecond); !at.Equal(want) {
			t.Errorf("triggered_at %v, want %v, the time of the view that completed the pattern", at, want)
		}
		p := e.profile(t, user)
		for _, c := range []struct {
			window time.Duration
			want   uint64
		}{{5 * time.Minute, 1}, {30 * time.Minute, 1}, {time.Hour + 0, 4}, {24 * time.Hour, 4}} {
			if got := count(t, p, "view", "tv", c.window); got != c.want {
				t.Errorf("views of tv in %v = %d, want %d", c.window, got, c.want)
			}
		}
		// Another late view in the same window is within the coupon's 24h
		// cooldown: it fires nothing.
		resp := e.publish(t, ev(user, "view", "tv", 50*time.Minute))
		if len(resp.Actions) != 0 {
			t.Errorf("a late view within the cooldown fired %v", resp.Actions)
		}
	})
}

// Acceptance (5): an invalid event is REJECTED with the violation, without
// affecting its batch neighbours.
func TestInvalidEventRejectedAlone(t *testing.T) {
	forBackends(t, func(t *testing.T, b backend) {
		e := b.newEnv(t, redisstore.Options{})
		const user = "mixed-user"
		noUser := ev("", "view", "phones", time.Minute)
		badType := ev(user, "View Page", "phones", time.Minute)
		future := ev(user, "view", "phones", -2*time.Hour)
		ancient := ev(user, "view", "phones", 91*24*time.Hour)
		noTime := ev(user, "view", "phones", 0)
		noTime.OccurredAt = nil
		badAttr := ev(user, "view", "phones", time.Minute)
		badAttr.Attributes = map[string]string{"": "empty key"}
		batch := []*nudgev1.Event{
			ev(user, "view", "phones", 3*time.Minute),
			noUser, badType, future, ancient, noTime, badAttr,
			ev(user, "view", "phones", time.Minute),
		}
		resp := e.publish(t, batch...)
		wantStatus(t, resp.Results[0], applied)
		wantStatus(t, resp.Results[7], applied)
		for _, c := range []struct {
			i      int
			reason string
		}{
			{1, "user_id: value is required [required]"},
			{2, "type: does not match regex pattern"},
			{3, "in the future"},
			{4, "older than the retention"},
			{5, "occurred_at: value is required"},
			{6, "attributes"},
		} {
			r := resp.Results[c.i]
			wantStatus(t, r, rejected)
			if !strings.Contains(r.Reason, c.reason) {
				t.Errorf("event %d: reason %q does not contain %q", c.i, r.Reason, c.reason)
			}
			if r.EventId != batch[c.i].EventId {
				t.Errorf("result %d is for %s, want %s", c.i, r.EventId, batch[c.i].EventId)
			}
		}
		if got := e.profile(t, user).Totals["view"]; got != 2 {
			t.Errorf("view total %d, want 2", got)
		}

		// A malformed request as a whole is InvalidArgument.
		_, err := e.ingest.Publish(ctxT(t), &nudgev1.PublishRequest{})
		wantCode(t, err, codes.InvalidArgument, "events")
		// On a stream too: the stream ends with InvalidArgument.
		stream, err := e.ingest.Stream(ctxT(t))
		if err != nil {
			t.Fatal(err)
		}
		if err := stream.Send(&nudgev1.StreamRequest{Seq: 1}); err != nil {
			t.Fatal(err)
		}
		_, err = stream.Recv()
		wantCode(t, err, codes.InvalidArgument, "events")
	})
}

// deadLetter delivers every action of the outbox to a group, never
// acknowledged, until n of them are in the dead-letter stream (one
// delivery each: MaxDeliveries 1).
func deadLetter(t *testing.T, e *env, n int) {
	t.Helper()
	o := delivery.New(e.rdb, e.store.Layout(), delivery.Options{Visibility: 20 * time.Millisecond, MaxDeliveries: 1, Block: 20 * time.Millisecond})
	ctx := ctxT(t)
	for {
		if _, err := o.Read(ctx, "never-acks", "m"); err != nil {
			t.Fatalf("Read: %v", err)
		}
		dead, err := o.DeadAfter(ctx, "", 100)
		if err != nil {
			t.Fatal(err)
		}
		if len(dead) >= n {
			return
		}
		if ctx.Err() != nil {
			t.Fatalf("%d dead letters, want %d: %v", len(dead), n, ctx.Err())
		}
	}
}

// Acceptance (6): DeleteProfile leaves no key for that user and no entry in
// the outbox or the dead-letter stream, and leaves other users alone.
func TestDeleteProfileLeavesNoKey(t *testing.T) {
	forBackends(t, func(t *testing.T, b backend) {
		e := b.newEnv(t, redisstore.Options{Buckets: 4})
		victim := "erase-me"
		// A neighbour in the same bucket, to check only the victim's entries go.
		neighbour := ""
		for i := 0; neighbour == ""; i++ {
			if u := fmt.Sprintf("keep-%d", i); e.store.Layout().Bucket(u) == e.store.Layout().Bucket(victim) {
				neighbour = u
			}
		}
		for _, u := range []string{victim, neighbour} {
			resp := e.publish(t, ev(u, "view", "phones", 9*time.Minute), ev(u, "view", "phones", 6*time.Minute), ev(u, "view", "phones", 3*time.Minute))
			if len(resp.Actions) != 1 {
				t.Fatalf("%s: %d actions, want 1", u, len(resp.Actions))
			}
		}
		// Both actions go to the dead-letter stream, as a sender that
		// never acknowledges them would make them: erasure covers it too.
		deadLetter(t, e, 2)
		del, err := e.prof.DeleteProfile(ctxT(t), &nudgev1.DeleteProfileRequest{UserId: victim})
		if err != nil {
			t.Fatal(err)
		}
		if !del.Deleted || del.ActionsDeleted != 1 {
			t.Errorf("DeleteProfile = %v, want deleted with 1 action", del)
		}
		dead, err := delivery.New(e.rdb, e.store.Layout(), delivery.Options{}).DeadAfter(ctxT(t), "", 100)
		if err != nil {
			t.Fatal(err)
		}
		if len(dead) != 1 || dead[0].Values["user_id"] != neighbour {
			t.Errorf("dead letters after erasing %s: %v, want the neighbour's only", victim, dead)
		}
		for _, k := range e.keys(t) {
			if strings.Contains(k, victim) {
				t.Errorf("key %q still exists", k)
			}
		}
		for _, a := range e.outbox(t, victim) {
			if a.UserID == victim {
				t.Errorf("outbox still holds %+v", a)
			}
		}
		if n := len(e.outbox(t, neighbour)); n != 1 {
			t.Errorf("neighbour's outbox entries: %d, want 1", n)
		}
		_, err = e.prof.GetProfile(ctxT(t), &nudgev1.GetProfileRequest{UserId: victim})
		wantCode(t, err, codes.NotFound, "not found")
		if e.profile(t, neighbour).Totals["view"] != 3 {
			t.Error("neighbour's profile changed")
		}
		again, err := e.prof.DeleteProfile(ctxT(t), &nudgev1.DeleteProfileRequest{UserId: victim})
		if err != nil || again.Deleted {
			t.Errorf("second delete = %v, %v; want deleted=false", again, err)
		}
	})
}

// GetDecision answers from the profile and the offers of the bundled rules.
func TestGetDecisionAnswersFromProfile(t *testing.T) {
	forBackends(t, func(t *testing.T, b backend) {
		e := b.newEnv(t, redisstore.Options{})
		const user = "decide-user"
		e.publish(t, inDaytime(ev(user, "view", "phones", 9*time.Minute)), ev(user, "view", "phones", 6*time.Minute), ev(user, "view", "phones", 3*time.Minute))
		resp, err := e.decide.GetDecision(ctxT(t), &nudgev1.GetDecisionRequest{UserId: user, Channel: "sms"})
		if err != nil {
			t.Fatal(err)
		}
		d := resp.Decision
		if d.Verdict != nudgev1.Verdict_VERDICT_SEND || d.Offer == nil || d.Degraded || resp.ProfileVersion != 1 {
			t.Errorf("decision = %v, version %d; want SEND with an offer on version 1", d, resp.ProfileVersion)
		}
		if len(d.Reasons) == 0 {
			t.Error("decision has no reasons")
		}

		unsub := ev(user, "unsubscribe", "", 0)
		unsub.Channel = "sms"
		e.publish(t, unsub)
		resp, err = e.decide.GetDecision(ctxT(t), &nudgev1.GetDecisionRequest{UserId: user, Channel: "sms"})
		if err != nil {
			t.Fatal(err)
		}
		if resp.Decision.Verdict != nudgev1.Verdict_VERDICT_NONE {
			t.Errorf("after unsubscribe from sms: %v, want NONE", resp.Decision)
		}

		_, err = e.decide.GetDecision(ctxT(t), &nudgev1.GetDecisionRequest{UserId: user})
		wantCode(t, err, codes.InvalidArgument, "channel")
	})
}

// A stored event keeps its event time to the millisecond, whatever the
// arrival order.
func TestEventTimeIsKept(t *testing.T) {
	forBackends(t, func(t *testing.T, b backend) {
		e := b.newEnv(t, redisstore.Options{})
		at := time.Now().Add(-7 * time.Minute).Truncate(time.Millisecond)
		e.publish(t, &nudgev1.Event{EventId: "t1", UserId: "time-user", Type: "purchase", Category: "phones", Value: 199.5, OccurredAt: timestamppb.New(at)})
		p := e.profile(t, "time-user")
		if got := p.LastSeen["purchase"].AsTime(); !got.Equal(at) {
			t.Errorf("last purchase at %v, want %v", got, at)
		}
		if p.PurchaseCount != 1 || p.PurchaseValue != 199.5 {
			t.Errorf("purchases %d / %v", p.PurchaseCount, p.PurchaseValue)
		}
	})
}
