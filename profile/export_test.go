package profile

// Queued reports how many users' parts wait on userID's shard, for tests
// that must know a call is queued before they let the shard go on.
func (s *RedisStore) Queued(userID string) int {
	sh := &s.shards[s.Bucket(userID)%len(s.shards)]
	sh.mu.Lock()
	defer sh.mu.Unlock()
	return len(sh.pending)
}
