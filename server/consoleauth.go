package server

// AuthRequired reports whether the server has tokens: without them every
// caller may call every method (the loopback development default).
func (s *Server) AuthRequired() bool { return s.tokens != nil }

// TokenRoles returns the name and roles of the token whose secret is
// secret, ok false when no token has it. The web console signs people in
// with it; their calls are then authorized as every call is.
func (s *Server) TokenRoles(secret string) (name string, roles []string, ok bool) {
	p := s.principalOf(secret)
	if p == nil {
		return "", nil, false
	}
	return p.name, roleNames(p.roles), true
}
