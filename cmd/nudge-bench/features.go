package main

import (
	"context"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/nudge-dm/nudge/client"
	nudgev1 "github.com/nudge-dm/nudge/proto/nudge/v1"
)

// The features workload: ProfileService.GetFeatures for batches of
// users, one result per batch size (features-1, features-10, ...), paced
// as decide is (paced). Its --seed writes histories that the features of
// the rules have something to compute on (seedHistory).

// maxFeatureUsers is the most users one GetFeatures call may name.
const maxFeatureUsers = 1000

// featuresJSON is the features workload's part of the report.
type featuresJSON struct {
	BatchSizes []int `json:"batch_sizes"`
	// Asked are the features asked for (empty: every feature of the
	// rules); Served those the first row answered had, values or errors.
	Asked        []string `json:"asked"`
	Served       []string `json:"served"`
	RulesVersion string   `json:"rules_version"`
	Rows         uint64   `json:"rows"`
	// RowErrors are rows with a feature that has no value (its
	// expression failed, or the profile could not be read); NotFound
	// rows of users without a stored profile.
	RowErrors     uint64 `json:"row_errors"`
	NotFound      uint64 `json:"not_found"`
	FirstRowError string `json:"first_row_error,omitempty"`
}

// featureTally gathers what the answers said, over every batch size.
type featureTally struct {
	rows, rowErrors, notFound atomic.Uint64
	mu                        sync.Mutex
	served                    []string
	rulesVersion, firstError  string
}

func (t *featureTally) add(resp *nudgev1.GetFeaturesResponse) {
	var errs, missing uint64
	var firstErr string
	for _, row := range resp.GetRows() {
		if !row.GetFound() {
			missing++
		}
		if len(row.GetErrors()) > 0 {
			errs++
			if firstErr == "" {
				name := slices.Min(slices.Collect(maps.Keys(row.GetErrors())))
				firstErr = fmt.Sprintf("user %s: %s: %s", row.GetUserId(), name, row.GetErrors()[name])
			}
		}
	}
	t.rows.Add(uint64(len(resp.GetRows())))
	t.rowErrors.Add(errs)
	t.notFound.Add(missing)
	t.mu.Lock()
	defer t.mu.Unlock()
	t.rulesVersion = resp.GetRulesVersion()
	if t.served == nil && len(resp.GetRows()) > 0 {
		row := resp.GetRows()[0]
		t.served = slices.Sorted(maps.Keys(row.GetValues()))
		for name := range row.GetErrors() {
			t.served = append(t.served, name)
		}
		slices.Sort(t.served)
	}
	if t.firstError == "" {
		t.firstError = firstErr
	}
}

func (t *featureTally) summary(cfg config) featuresJSON {
	t.mu.Lock()
	defer t.mu.Unlock()
	asked := cfg.Features
	if asked == nil {
		asked = []string{} // every feature: [] rather than null
	}
	return featuresJSON{
		BatchSizes: cfg.BatchSizes, Asked: asked, Served: t.served, RulesVersion: t.rulesVersion,
		Rows: t.rows.Load(), RowErrors: t.rowErrors.Load(), NotFound: t.notFound.Load(), FirstRowError: t.firstError,
	}
}

// featureName is the result name of a batch size.
func featureName(size int) string { return "features-" + strconv.Itoa(size) }

// featuresCall asks GetFeatures for size users: the user paced drew and
// size-1 more drawn by caller w's own generator, from the same
// distribution (a user may be drawn twice: it gets two rows).
func featuresCall(cfg config, conns []*client.Client, size int, tally *featureTally) callFunc {
	profiles := make([]nudgev1.ProfileServiceClient, len(conns))
	for i, c := range conns {
		profiles[i] = nudgev1.NewProfileServiceClient(c.Conn())
	}
	// paced runs caller w on one goroutine: its generator is its own.
	seed := uint64(time.Now().UnixNano())
	pickers := make([]userPicker, cfg.Concurrency)
	for w := range pickers {
		pickers[w] = cfg.newPicker(rand.New(rand.NewPCG(seed, uint64(w)<<32|uint64(size))))
	}
	return func(ctx context.Context, w, u int) (bool, error) {
		ids := make([]string, size)
		ids[0] = cfg.userID(u)
		for i := 1; i < size; i++ {
			ids[i] = cfg.userID(pickers[w]())
		}
		resp, err := profiles[w%len(profiles)].GetFeatures(ctx, &nudgev1.GetFeaturesRequest{UserIds: ids, Features: cfg.Features})
		if err != nil {
			return false, err
		}
		if len(resp.GetRows()) != size {
			// The server broke its contract: counted as an error of the call.
			return false, status.Errorf(codes.Internal, "%d feature rows for %d users", len(resp.GetRows()), size)
		}
		tally.add(resp)
		return false, nil
	}
}

// featureChecks are the features workload's checks (--verify): every row
// has all its features; with --seed, every user has a profile.
func featureChecks(cfg config, f featuresJSON) []check {
	detail := fmt.Sprintf("%d of %d rows with a feature error", f.RowErrors, f.Rows)
	if f.FirstRowError != "" {
		detail += "; first: " + f.FirstRowError
	}
	checks := []check{{Name: "features rows without errors", OK: f.Rows > 0 && f.RowErrors == 0, Detail: detail}}
	if cfg.Seed {
		checks = append(checks, check{Name: "features users found", OK: f.NotFound == 0,
			Detail: fmt.Sprintf("%d of %d rows of users without a profile", f.NotFound, f.Rows)})
	}
	return checks
}

// Seeded histories: a mix of event types, in the 16 categories of the
// other workloads, purchase values below the bundled rules' 200 for a
// thank-you so that seeding sends no actions.
var historyTypes = []struct {
	typ   string
	share float64 // cumulative
}{{"view", 0.60}, {"click", 0.80}, {"add_to_cart", 0.92}, {"purchase", 1}}

// historyEvent is event i of the seeded histories: event i%SeedEvents of
// user i/SeedEvents, at a time uniform over the SeedSpan before now. It
// depends only on the prefix and i.
func historyEvent(cfg config, salt uint64, i int, now time.Time) *nudgev1.Event {
	rng := rand.New(rand.NewPCG(salt, uint64(i)))
	e := &nudgev1.Event{
		EventId:    cfg.Prefix + "-h-" + strconv.Itoa(i),
		UserId:     cfg.userID(i / cfg.SeedEvents),
		Category:   "c" + strconv.Itoa(rng.IntN(categories)),
		OccurredAt: timestamppb.New(now.Add(-time.Duration(rng.Int64N(int64(cfg.SeedSpan))))),
	}
	x := rng.Float64()
	for _, t := range historyTypes {
		if x < t.share {
			e.Type = t.typ
			break
		}
	}
	if e.Type == "purchase" {
		e.Value = float64(5 + rng.IntN(145))
	}
	return e
}

// seedHistory writes --seed-events events per user, spread over the
// --seed-span before now, through the ingest workload's streams: a
// user's events are consecutive, so a batch holds whole users. Every
// event must be applied (or be a duplicate, on a re-run with the same
// --prefix): one rejected means the span reaches past nudged's
// retention. It returns the users seeded.
func seedHistory(ctx context.Context, cfg config, conns []*client.Client) (int, error) {
	st := newStats("seed")
	salt := hashString(cfg.Prefix)
	total := cfg.Users * cfg.SeedEvents
	ingest(ctx, cfg, conns, ingestPlan{events: total, event: func(i int, now time.Time) *nudgev1.Event {
		return historyEvent(cfg, salt, i, now)
	}}, st)
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	got, rejected := st.applied.Load()+st.duplicate.Load(), st.rejected.Load()
	switch {
	case rejected > 0:
		return 0, fmt.Errorf("%d of %d events rejected: does --seed-span %v reach past nudged's profile retention?", rejected, total, cfg.SeedSpan)
	case got != uint64(total):
		// Streams that failed were retried: errors matter when events are missing.
		return 0, fmt.Errorf("%d of %d events applied or duplicate; stream errors: %s", got, total, errorList(st))
	}
	return cfg.Users, nil
}

// errorList is a workload's errors by gRPC code, for a message.
func errorList(st *stats) string {
	st.mu.Lock()
	defer st.mu.Unlock()
	var parts []string
	for _, c := range slices.Sorted(maps.Keys(st.errors)) {
		parts = append(parts, fmt.Sprintf("%s=%d", c, st.errors[c]))
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, " ")
}
