package redisstore

import (
	"bytes"
	"context"
	"net"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

func TestMain(m *testing.M) {
	// The fault tests make the client log every failed dial.
	redis.SetLogger(quietLogger{})
	code := m.Run()
	stopShared()
	os.Exit(code)
}

type quietLogger struct{}

func (quietLogger) Printf(context.Context, string, ...any) {}

// redisServer is a redis-server process on a loopback port, without
// persistence, that a test can stop and start again on the same port.
type redisServer struct {
	tb   testing.TB
	path string
	port string
	args []string // more redis-server arguments

	mu  sync.Mutex
	cmd *exec.Cmd
	out bytes.Buffer
}

// startRedis starts a redis-server for tb and stops it when tb ends. Without
// the binary it skips tb, or fails it when CI=true.
func startRedis(tb testing.TB, args ...string) *redisServer {
	tb.Helper()
	s := newRedisServer(tb)
	s.args = args
	tb.Cleanup(s.Stop)
	s.Start()
	return s
}

func newRedisServer(tb testing.TB) *redisServer {
	tb.Helper()
	path, err := exec.LookPath("redis-server")
	if err != nil {
		if os.Getenv("CI") == "true" {
			tb.Fatalf("redis-server is required when CI=true: %v", err)
		}
		tb.Skipf("redis-server not installed: %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatalf("find a free port: %v", err)
	}
	port := strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
	_ = ln.Close()
	return &redisServer{tb: tb, path: path, port: port}
}

// Addr is the server's host:port.
func (s *redisServer) Addr() string { return "127.0.0.1:" + s.port }

// Start starts the server and returns once it answers PING.
func (s *redisServer) Start() {
	s.tb.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil {
		return
	}
	s.out.Reset()
	args := append([]string{"--port", s.port, "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no"}, s.args...)
	cmd := exec.Command(s.path, args...)
	cmd.Stdout, cmd.Stderr = &s.out, &s.out
	if err := cmd.Start(); err != nil {
		s.tb.Fatalf("start redis-server: %v", err)
	}
	s.cmd = cmd
	c := redis.NewClient(&redis.Options{Addr: s.Addr(), DialTimeout: 100 * time.Millisecond, MaxRetries: -1, DialerRetries: 1, DisableIdentity: true})
	defer c.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		err := c.Ping(ctx).Err()
		cancel()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			s.tb.Fatalf("redis-server on %s does not answer: %v\n%s", s.Addr(), err, s.out.String())
		}
		time.Sleep(5 * time.Millisecond) // polling a starting process; nothing to wait on
	}
}

// Stop kills the server; its data is gone.
func (s *redisServer) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Kill()
	_ = s.cmd.Wait()
	s.cmd = nil
}

// Freeze stops the server process without closing its sockets, so that
// calls hang until their timeout; Thaw resumes it.
func (s *redisServer) Freeze() { s.signal(syscall.SIGSTOP) }

// Thaw resumes a frozen server.
func (s *redisServer) Thaw() { s.signal(syscall.SIGCONT) }

func (s *redisServer) signal(sig os.Signal) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil {
		_ = s.cmd.Process.Signal(sig)
	}
}

// Client returns a client of the server without retries, closed when tb
// ends. Its timeouts are long, so that a loaded machine never makes a
// healthy server look unreachable; the limiter's own WithTimeout is what
// fault tests shorten.
func (s *redisServer) Client(tb testing.TB) *redis.Client {
	c := redis.NewClient(&redis.Options{
		Addr:            s.Addr(),
		DialTimeout:     5 * time.Second,
		ReadTimeout:     5 * time.Second,
		WriteTimeout:    5 * time.Second,
		PoolTimeout:     5 * time.Second,
		MaxRetries:      -1,
		DialerRetries:   1,
		DisableIdentity: true,
	})
	tb.Cleanup(func() { _ = c.Close() })
	return c
}
