package redisstore

import (
	"context"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/apiquota/limiter"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// tcpProxy forwards loopback connections to a Redis server until Cut, after
// which it swallows what clients send, so that their calls hang as on a
// broken network; Mend forwards again.
type tcpProxy struct {
	ln     net.Listener
	target string
	cut    atomic.Bool
	wg     sync.WaitGroup
	mu     sync.Mutex
	conns  []net.Conn
}

func startProxy(t *testing.T, target string) *tcpProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	p := &tcpProxy{ln: ln, target: target}
	p.wg.Go(p.serve)
	t.Cleanup(p.close)
	return p
}

func (p *tcpProxy) Addr() string { return p.ln.Addr().String() }
func (p *tcpProxy) Cut()         { p.cut.Store(true) }
func (p *tcpProxy) Mend()        { p.cut.Store(false) }

func (p *tcpProxy) serve() {
	for {
		client, err := p.ln.Accept()
		if err != nil {
			return
		}
		server, err := net.Dial("tcp", p.target)
		if err != nil {
			_ = client.Close()
			continue
		}
		p.mu.Lock()
		p.conns = append(p.conns, client, server)
		p.mu.Unlock()
		p.wg.Go(func() { p.pipe(server, client, true) })
		p.wg.Go(func() { p.pipe(client, server, false) })
	}
}

// pipe copies from src to dst; requests (toServer) are dropped while cut.
func (p *tcpProxy) pipe(dst, src net.Conn, toServer bool) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 && !(toServer && p.cut.Load()) {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			_ = dst.Close()
			return
		}
	}
}

func (p *tcpProxy) close() {
	_ = p.ln.Close()
	p.mu.Lock()
	for _, c := range p.conns {
		_ = c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

// TestPauseWhileUnreachable: a 429's Retry-After reaches a Transport whose
// store cannot reach Redis (the network swallows every request): this
// process waits it out by itself under FailOpen, and the pause reaches the
// other processes once the network is back.
func TestPauseWhileUnreachable(t *testing.T) {
	s := startRedis(t)
	ctx := context.Background()
	proxy := startProxy(t, s.Addr())
	c := redis.NewClient(&redis.Options{Addr: proxy.Addr()}) // default options
	t.Cleanup(func() { _ = c.Close() })
	const d = 200 * time.Millisecond
	l, err := New(c, "pause", 100, time.Minute, WithFailurePolicy(FailOpen), WithTimeout(d))
	require.NoError(t, err)
	other := newTestLimiter(t, s.Client(t), "pause", 100, time.Minute)
	ok, err := l.Allow(ctx)
	require.NoError(t, err)
	require.True(t, ok)

	proxy.Cut()
	const retryAfter = 400 * time.Millisecond
	var sent []time.Time
	rt := roundTripFunc(func(req *http.Request) (*http.Response, error) {
		sent = append(sent, time.Now())
		resp := &http.Response{StatusCode: http.StatusOK, Header: http.Header{}, Body: io.NopCloser(strings.NewReader("")), Request: req}
		if len(sent) == 1 {
			resp.StatusCode = http.StatusTooManyRequests
			resp.Header.Set("Retry-After-Ms", strconv.Itoa(int(retryAfter/time.Millisecond)))
		}
		return resp, nil
	})
	tr := limiter.NewTransport(rt, l)
	req, err := http.NewRequest(http.MethodGet, "http://api.example/", nil)
	require.NoError(t, err)
	resp, err := tr.RoundTrip(req)
	require.NoError(t, err)
	_ = resp.Body.Close()
	assert.Equal(t, http.StatusOK, resp.StatusCode)
	require.Len(t, sent, 2)
	assert.GreaterOrEqual(t, sent[1].Sub(sent[0]), retryAfter-d, "the retry waited for the server, though Redis was away")

	l.PauseUntil(time.Now().Add(time.Minute))
	ok, err = l.Allow(ctx)
	require.NoError(t, err)
	assert.False(t, ok, "paused here, whatever Redis says")
	assert.Equal(t, 100-1, remainingOf(t, other), "the pause has not reached Redis")

	proxy.Mend()
	require.Eventually(t, func() bool {
		_, _ = l.Allow(ctx) // paused: writes the pause, admits nothing
		return remainingOf(t, other) == 0
	}, 30*time.Second, 20*time.Millisecond, "the pause reaches every process once Redis answers")
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// TestFullMemory fills Redis's memory under noeviction: the limiter keeps
// working and nothing it writes is lost, since each script frees before it
// writes (see admitSource).
func TestFullMemory(t *testing.T) {
	s := startRedis(t)
	ctx := context.Background()
	c := s.Client(t)
	l := newTestLimiter(t, c, "oom", 5, time.Minute)
	p, err := l.Acquire(ctx)
	require.NoError(t, err)
	require.NoError(t, c.ConfigSet(ctx, "maxmemory", strconv.FormatInt(usedMemory(t, c)+64<<10, 10)).Err())
	// Values ever smaller, each size until refused, so that Redis counts
	// itself full whatever the size of the write: a write's own arguments
	// count while Redis decides.
	for size, i := 8<<10, 0; size > 0; size /= 4 {
		for ; ; i++ {
			if err := c.Set(ctx, "junk:"+strconv.Itoa(i), strings.Repeat("x", size), 0).Err(); err != nil {
				require.True(t, strings.HasPrefix(err.Error(), "OOM"), err.Error())
				break
			}
		}
	}
	require.True(t, strings.HasPrefix(c.Set(ctx, "more", "x", 0).Err().Error(), "OOM"), "memory is full")

	ok, err := l.Allow(ctx)
	require.NoError(t, err)
	assert.True(t, ok)
	assert.EqualValues(t, 2, c.ZCard(ctx, l.keys[0]).Val(), "the admission is written")
	p.Done()
	score, err := c.ZScore(ctx, l.keys[0], idOf(p.(*permit).seq)).Result()
	require.NoError(t, err)
	assert.Positive(t, score, "the Done is written")
	l.PauseUntil(time.Now().Add(time.Minute))
	assert.Greater(t, c.PTTL(ctx, l.keys[1]).Val(), 50*time.Second, "the pause is written")
}

// TestRefusedWrites turns Redis into a read-only replica, as a failover
// does under a client: writes that Redis refuses apply the failure policy,
// and a Done and a pause it refuses are kept and written once it takes
// writes again, never dropped.
func TestRefusedWrites(t *testing.T) {
	s := startRedis(t)
	ctx := context.Background()
	c := s.Client(t)
	closed := newTestLimiter(t, c, "ro", 5, time.Minute)
	open := newTestLimiter(t, c, "ro", 5, time.Minute, WithFailurePolicy(FailOpen))
	p, err := closed.Acquire(ctx)
	require.NoError(t, err)

	// A replica of a primary that never answers: it keeps its data, serves
	// reads and refuses writes.
	require.NoError(t, c.ReplicaOf(ctx, "127.0.0.1", "1").Err())
	err = c.Set(ctx, "probe", "x", 0).Err()
	require.Error(t, err)
	require.True(t, strings.HasPrefix(err.Error(), "READONLY"), err.Error())

	ok, err := closed.Allow(ctx)
	assert.False(t, ok)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "redisstore: redis unreachable: READONLY")
	ok, err = open.Allow(ctx)
	assert.NoError(t, err)
	assert.True(t, ok, "FailOpen admits while Redis refuses writes")

	p.Done()
	closed.PauseUntil(time.Now().Add(time.Minute))
	ok, err = closed.Allow(ctx)
	assert.NoError(t, err)
	assert.False(t, ok, "the refused pause holds this process back")
	score, err := c.ZScore(ctx, closed.keys[0], idOf(p.(*permit).seq)).Result()
	require.NoError(t, err)
	assert.Negative(t, score, "Redis refused the Done: still in flight there")
	assert.EqualValues(t, 0, c.Exists(ctx, closed.keys[1]).Val(), "Redis refused the pause")

	require.NoError(t, c.ReplicaOf(ctx, "NO", "ONE").Err())
	n, err := closed.Remaining(ctx) // paused here: writes what Redis missed
	require.NoError(t, err)
	assert.Zero(t, n)
	score, err = c.ZScore(ctx, closed.keys[0], idOf(p.(*permit).seq)).Result()
	require.NoError(t, err)
	assert.Positive(t, score, "the Done is written")
	assert.Greater(t, c.PTTL(ctx, closed.keys[1]).Val(), 50*time.Second, "the pause is written")
	n, err = open.Remaining(ctx)
	require.NoError(t, err)
	assert.Zero(t, n, "and reaches the other processes")
}
