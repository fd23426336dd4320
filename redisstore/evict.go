package redisstore

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
)

// ErrEvictionRisk is wrapped by the error of EvictionRisk: Redis runs with a
// maxmemory-policy under which it may evict the limiter's keys.
var ErrEvictionRisk = errors.New("redisstore: redis may evict the limiter's keys")

// checkEviction asks Redis, within timeout, for its maxmemory and
// maxmemory-policy, and returns an error wrapping ErrEvictionRisk when a
// memory limit is set and the policy is not noeviction: allkeys-* may evict
// any key, volatile-* any key with an expiry, and every key of the limiter
// has one (under volatile-* they are often the first to go). No answer, or
// a refusal (managed Redis often disables CONFIG), is no evidence: nil.
//
// It runs on the caller's goroutine: a client with ContextTimeoutEnabled
// stops at the timeout, one on its default options only at its own read
// timeout, and only when Redis is frozen rather than down.
func checkEviction(client redis.UniversalClient, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cfg, err := client.ConfigGet(ctx, "maxmemory*").Result()
	if err != nil {
		return nil
	}
	return evictionRisk(cfg["maxmemory"], cfg["maxmemory-policy"])
}

// evictionRisk returns the error of checkEviction for the settings read.
func evictionRisk(maxmemory, policy string) error {
	if policy == "" || policy == "noeviction" || maxmemory == "0" || maxmemory == "" {
		return nil
	}
	return fmt.Errorf("%w: maxmemory-policy is %s with maxmemory %s bytes; use noeviction", ErrEvictionRisk, policy, maxmemory)
}
