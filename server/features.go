package server

import (
	"context"
	"errors"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/nudge-dm/nudge/decision"
	"github.com/nudge-dm/nudge/profile"
	nudgev1 "github.com/nudge-dm/nudge/proto/nudge/v1"
)

// This file is features for models (ProfileService.GetFeatures and
// ExportFeatures): the rules file's features, evaluated by decision on
// profiles read as decisions read them (GetFeatures) or by a scan of the
// whole store (ExportFeatures). Both are read-only, open to RoleFeatures
// and RoleAdmin (auth.go).

// ProfileScanner reads every stored profile, a page at a time:
// ProfileService.ExportFeatures. A *redisstore.Store is one; New finds it
// on its store (the Store given to New). With a store that is not,
// ExportFeatures answers UNIMPLEMENTED.
type ProfileScanner interface {
	// ScanProfiles calls fn with pages of at most pageSize profiles, each
	// user at most once, one page at a time; errs[i] is a wrapped
	// profile.ErrCorrupt (profiles[i] nil) for a key that does not hold a
	// profile. It returns fn's error, ctx's, or the store's.
	ScanProfiles(ctx context.Context, pageSize int, fn func(userIDs []string, profiles []*profile.Profile, errs []error) error) error
}

const (
	// exportPage is the most rows of one ExportFeaturesResponse, and the
	// page size of the scan.
	exportPage = 500
	// exportBytes is the size past which an ExportFeaturesResponse is
	// sent with fewer rows (many features per row): a quarter of a gRPC
	// client's default receive limit (4 MiB).
	exportBytes = 1 << 20
)

// features resolves the request's feature names with the rules: every
// feature, in file order, when names is empty. Rules without features
// answer FAILED_PRECONDITION, an unknown name INVALID_ARGUMENT naming it
// and the defined ones (decision.Rules.CheckFeatures says both).
func features(rules *decision.Rules, names []string) ([]string, error) {
	defined := rules.Features()
	if len(defined) == 0 {
		return nil, errNoFeatures
	}
	if len(names) > 0 {
		if err := rules.CheckFeatures(names); err != nil {
			return nil, invalidRequest(err.Error())
		}
		return names, nil
	}
	all := make([]string, len(defined))
	for i, f := range defined {
		all[i] = f.Name
	}
	return all, nil
}

// featureEval evaluates features into rows, with one rules snapshot and
// one instant, reusing its buffer of values.
type featureEval struct {
	rules *decision.Rules
	names []string
	at    time.Time
	buf   []decision.FeatureValue
	empty profile.Profile // the profile of a user never seen
}

// row is the features of one user: p found (version, values), a user never
// seen (err profile.ErrNotFound: the features of an empty profile), or a
// profile that cannot be read (err profile.ErrCorrupt: every feature in
// errors).
func (e *featureEval) row(userID string, p *profile.Profile, err error) *nudgev1.FeatureRow {
	r := &nudgev1.FeatureRow{UserId: userID, Found: !errors.Is(err, profile.ErrNotFound)}
	switch {
	case err != nil && r.Found: // corrupt
		r.Errors = make(map[string]string, len(e.names))
		for _, n := range e.names {
			r.Errors[n] = err.Error()
		}
		return r
	case err != nil:
		p = &e.empty
	default:
		r.ProfileVersion = p.Version
	}
	e.buf = e.rules.EvalFeatures(p, e.names, e.at, e.buf[:0])
	r.Values = make(map[string]float64, len(e.buf))
	for _, v := range e.buf {
		if v.Err != nil {
			if r.Errors == nil {
				r.Errors = make(map[string]string)
			}
			r.Errors[v.Name] = v.Err.Error()
			continue
		}
		r.Values[v.Name] = v.Value
	}
	return r
}

// GetFeatures evaluates features on the users' profiles: those the
// near-cache holds from memory (DecisionStore.Peek), the others read in
// one pipelined round trip (ReadMany: a model scoring many users must
// not fill the decisions' near-cache with them, which made the garbage
// collector of a 150 MiB nudged the bottleneck, BENCHMARKS.md), all at
// one instant of the server's
// clock. A user named twice is read once and answered twice. A user
// without a profile gets the features of an empty one; a corrupt profile,
// every feature in its row's errors. The store failing answers
// UNAVAILABLE (no degraded answer: a model caller has no fallback to
// offer, and retries).
func (s *Server) GetFeatures(ctx context.Context, req *nudgev1.GetFeaturesRequest) (*nudgev1.GetFeaturesResponse, error) {
	if err := s.validator.Validate(req); err != nil {
		return nil, invalidArgument(err)
	}
	rules := s.rules.Rules()
	names, err := features(rules, req.GetFeatures())
	if err != nil {
		return nil, err
	}
	ids := req.GetUserIds()
	profiles := make([]*profile.Profile, len(ids))
	errs := make([]error, len(ids))
	var missed []string          // users to read, once each
	missedAt := map[string]int{} // a missed user -> its index in missed
	var reads [][2]int           // (request index, index in missed)
	for i, id := range ids {
		var found bool
		if profiles[i], found, errs[i] = s.decisions.Peek(id, 0); found {
			continue
		}
		k, ok := missedAt[id]
		if !ok {
			k = len(missed)
			missedAt[id] = k
			missed = append(missed, id)
		}
		reads = append(reads, [2]int{i, k})
	}
	if len(missed) > 0 {
		ps, es := s.decisions.ReadMany(ctx, missed)
		if ctx.Err() != nil {
			return nil, toStatus(ctx.Err())
		}
		for _, r := range reads {
			profiles[r[0]], errs[r[0]] = ps[r[1]], es[r[1]]
		}
	}
	for _, err := range errs {
		if err != nil && !errors.Is(err, profile.ErrNotFound) && !errors.Is(err, profile.ErrCorrupt) {
			return nil, toStatus(err) // the store's failure, not one user's
		}
	}
	e := &featureEval{rules: rules, names: names, at: s.cfg.Now()}
	resp := &nudgev1.GetFeaturesResponse{
		Rows:         make([]*nudgev1.FeatureRow, len(ids)),
		RulesVersion: rules.Version(),
		At:           timestamppb.New(e.at),
		Features:     names,
	}
	for i, id := range ids {
		resp.Rows[i] = e.row(id, profiles[i], errs[i])
	}
	return resp, nil
}

// ExportFeatures evaluates features on every stored profile
// (ProfileScanner), with the rules in force and the server's clock when
// the call starts. It sends a header first (the features, the rules
// version, the instant; no rows), then the rows as the scan reads them:
// at most exportPage rows and about exportBytes per message. It stops when
// the caller goes away (the scan's context is the call's) and, with
// UNAVAILABLE, when the server drains, between two pages.
func (s *Server) ExportFeatures(req *nudgev1.ExportFeaturesRequest, stream grpc.ServerStreamingServer[nudgev1.ExportFeaturesResponse]) error {
	if err := s.validator.Validate(req); err != nil {
		return invalidArgument(err)
	}
	sc, ok := s.profiles.(ProfileScanner)
	if !ok {
		return errNoScanner
	}
	rules := s.rules.Rules()
	names, err := features(rules, req.GetFeatures())
	if err != nil {
		return err
	}
	e := &featureEval{rules: rules, names: names, at: s.cfg.Now()}
	at := timestamppb.New(e.at)
	if err := stream.Send(&nudgev1.ExportFeaturesResponse{RulesVersion: rules.Version(), At: at, Features: names}); err != nil {
		return err
	}
	var (
		resp *nudgev1.ExportFeaturesResponse
		size int
	)
	flush := func() error {
		if resp == nil {
			return nil
		}
		err := stream.Send(resp)
		resp, size = nil, 0
		return err
	}
	ctx := stream.Context()
	err = sc.ScanProfiles(ctx, exportPage, func(ids []string, ps []*profile.Profile, errs []error) error {
		select {
		case <-s.draining:
			return errExportDraining
		default:
		}
		for i, id := range ids {
			if resp == nil {
				resp = &nudgev1.ExportFeaturesResponse{Rows: make([]*nudgev1.FeatureRow, 0, exportPage), RulesVersion: rules.Version(), At: at}
			}
			r := e.row(id, ps[i], errs[i])
			resp.Rows = append(resp.Rows, r)
			if size += proto.Size(r) + 3; len(resp.Rows) == exportPage || size >= exportBytes {
				if err := flush(); err != nil {
					return err
				}
			}
		}
		return nil
	})
	switch {
	case err == nil:
		return flush()
	case ctx.Err() != nil:
		return toStatus(ctx.Err())
	case errors.Is(err, profile.ErrUnavailable):
		return unavailable("scan the profiles", err)
	}
	return toStatus(err) // the stream's own error, or errExportDraining
}
