package server

import (
	"context"

	nudgev1 "github.com/nudge-dm/nudge/proto/nudge/v1"
)

// GetProfile returns a readable view of the user's profile.
func (s *Server) GetProfile(ctx context.Context, req *nudgev1.GetProfileRequest) (*nudgev1.GetProfileResponse, error) {
	if err := s.validator.Validate(req); err != nil {
		return nil, invalidArgument(err)
	}
	p, err := s.profiles.Get(ctx, req.GetUserId())
	if err != nil {
		return nil, toStatus(err)
	}
	return &nudgev1.GetProfileResponse{Profile: profileToProto(req.GetUserId(), p, s.cfg.Now())}, nil
}

// DeleteProfile erases the user from every key nudge writes: the profile,
// and its entries in the outbox, the dead-letter and the audit streams.
func (s *Server) DeleteProfile(ctx context.Context, req *nudgev1.DeleteProfileRequest) (*nudgev1.DeleteProfileResponse, error) {
	if err := s.validator.Validate(req); err != nil {
		return nil, invalidArgument(err)
	}
	res, err := s.profiles.Delete(ctx, req.GetUserId())
	if err != nil {
		return nil, toStatus(err)
	}
	return &nudgev1.DeleteProfileResponse{Deleted: res.Existed, ActionsDeleted: uint64(res.Actions)}, nil
}
