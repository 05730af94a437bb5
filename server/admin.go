package server

import (
	"context"
	"errors"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/nudge-dm/nudge/delivery"

	nudgev1 "github.com/nudge-dm/nudge/proto/nudge/v1"
)

// GetRules describes the rules in force and, when the file on disk was
// refused, that file.
func (s *Server) GetRules(_ context.Context, req *nudgev1.GetRulesRequest) (*nudgev1.GetRulesResponse, error) {
	r := s.rules.Rules()
	triggers, offers := r.Counts()
	resp := &nudgev1.GetRulesResponse{
		Version:  r.Version(),
		LoadedAt: timestamppb.New(s.rules.LoadedAt()),
		Source:   s.rules.Source(),
		Triggers: uint32(triggers),
		Offers:   uint32(offers),
	}
	if req.GetIncludeContent() {
		resp.Content = string(r.Text())
	}
	if ref, ok := s.rules.Refused(); ok {
		resp.Refusal = &nudgev1.RulesRefusal{At: timestamppb.New(ref.At), Version: ref.Version}
		if ref.Err != nil { // another RuleSource may leave it nil
			resp.Refusal.Error = ref.Err.Error()
		}
	}
	return resp, nil
}

// ListGroups describes every consumer group of the outbox.
func (s *Server) ListGroups(ctx context.Context, _ *nudgev1.ListGroupsRequest) (*nudgev1.ListGroupsResponse, error) {
	if s.cfg.Outbox == nil {
		return nil, errNoOutbox
	}
	groups, err := s.cfg.Outbox.Groups(ctx, s.cfg.Now())
	if err != nil {
		if ctx.Err() != nil {
			return nil, toStatus(ctx.Err())
		}
		return nil, unavailable("list consumer groups", err)
	}
	resp := &nudgev1.ListGroupsResponse{Groups: make([]*nudgev1.ConsumerGroup, 0, len(groups))}
	for _, g := range groups {
		cg := &nudgev1.ConsumerGroup{
			Name:              g.Name,
			Pending:           uint64(max(g.Pending, 0)),
			Undelivered:       uint64(max(g.Undelivered, 0)),
			UnknownLagStreams: uint32(g.Unknown),
			Consumers:         uint32(g.Consumers),
			Abandoned:         g.Abandoned,
		}
		if !g.LastActive.IsZero() {
			cg.LastActive = timestamppb.New(g.LastActive)
			cg.Idle = durationpb.New(g.Idle)
		}
		resp.Groups = append(resp.Groups, cg)
	}
	return resp, nil
}

// DeleteGroup destroys a consumer group on every outbox stream.
func (s *Server) DeleteGroup(ctx context.Context, req *nudgev1.DeleteGroupRequest) (*nudgev1.DeleteGroupResponse, error) {
	if err := s.validator.Validate(req); err != nil {
		return nil, invalidArgument(err)
	}
	if s.cfg.Outbox == nil {
		return nil, errNoOutbox
	}
	n, err := s.cfg.Outbox.DeleteGroup(ctx, req.GetGroup())
	switch {
	case errors.Is(err, delivery.ErrGroupNotFound):
		return nil, toStatus(err)
	case err != nil && ctx.Err() != nil:
		return nil, toStatus(ctx.Err())
	case err != nil:
		return nil, unavailable("delete consumer group", err)
	}
	s.cfg.Logger.InfoContext(ctx, "consumer group deleted", "group", req.GetGroup(), "streams", n)
	return &nudgev1.DeleteGroupResponse{Streams: uint32(n)}, nil
}
