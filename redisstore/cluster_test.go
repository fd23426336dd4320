package redisstore

import (
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// startCluster starts a Redis Cluster of three masters on loopback, no
// replicas, and returns its nodes.
func startCluster(t *testing.T) []*redisServer {
	t.Helper()
	var nodes []*redisServer
	var addrs []string
	for range 3 {
		s := startRedis(t, "--cluster-enabled", "yes", "--dir", t.TempDir(), "--cluster-node-timeout", "60000")
		nodes = append(nodes, s)
		addrs = append(addrs, s.Addr())
	}
	cli, err := exec.LookPath("redis-cli")
	require.NoError(t, err, "redis-cli comes with redis-server")
	out, err := exec.Command(cli, append(append([]string{"--cluster", "create"}, addrs...),
		"--cluster-replicas", "0", "--cluster-yes")...).CombinedOutput()
	require.NoError(t, err, "%s", out)
	for _, s := range nodes {
		c := s.Client(t)
		require.Eventually(t, func() bool {
			info, err := c.ClusterInfo(context.Background()).Result()
			return err == nil && strings.Contains(info, "cluster_state:ok")
		}, 30*time.Second, 20*time.Millisecond)
	}
	return nodes
}

// TestCluster runs limiters on a real three-master Redis Cluster: the keys of
// one limiter share a slot, limiters spread over the nodes, and with one node
// frozen the limiters on the others keep deciding while those on the frozen
// one answer by their failure policy within the timeout.
func TestCluster(t *testing.T) {
	nodes := startCluster(t)
	ctx := context.Background()
	c := redis.NewClusterClient(&redis.ClusterOptions{Addrs: []string{nodes[0].Addr()}, DisableIdentity: true})
	t.Cleanup(func() { _ = c.Close() })

	const d = 300 * time.Millisecond
	byNode := make(map[string][]*Limiter)
	for _, key := range []string{"a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l"} {
		l := newTestLimiter(t, c, key, 2, time.Minute, WithTimeout(d), WithFailurePolicy(FailOpen))
		slot := c.ClusterKeySlot(ctx, l.keys[0]).Val()
		for _, key := range l.keys[1:] {
			assert.Equal(t, slot, c.ClusterKeySlot(ctx, key).Val(), "one slot per limiter")
		}
		master, err := c.MasterForKey(ctx, l.keys[0])
		require.NoError(t, err)
		addr := master.Options().Addr
		byNode[addr] = append(byNode[addr], l)
	}
	require.Len(t, byNode, 3, "limiters on every master")

	for _, ls := range byNode {
		l := ls[0]
		ok, err := l.Allow(ctx)
		require.NoError(t, err)
		assert.True(t, ok)
		p, err := l.Acquire(ctx)
		require.NoError(t, err)
		ok, err = l.Allow(ctx)
		require.NoError(t, err)
		assert.False(t, ok, "2 per minute, across the cluster")
		p.Cancel()
		assert.Equal(t, 1, remainingOf(t, l))
	}

	frozen := nodes[1]
	frozen.Freeze()
	defer frozen.Thaw()
	for addr, ls := range byNode {
		for _, l := range ls {
			start := time.Now()
			ok, err := l.Allow(ctx)
			took := time.Since(start)
			require.NoError(t, err)
			assert.True(t, ok)
			assert.Less(t, took, 10*d, "%s: within the timeout", addr)
			if addr != frozen.Addr() {
				n, err := l.Remaining(ctx)
				require.NoError(t, err)
				assert.Less(t, n, 2, "%s still serves: the admission counted", addr)
			}
		}
	}
	frozen.Thaw()
	for _, l := range byNode[frozen.Addr()] {
		require.Eventually(t, func() bool {
			_, err := l.decide(ctx, opRemaining, 0)
			return err == nil
		}, 30*time.Second, 10*time.Millisecond, "the thawed node serves again")
	}
}
