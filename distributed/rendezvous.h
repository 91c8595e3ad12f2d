// The TCP rendezvous that gathers a job's ranks (DESIGN.md section 6): rank 0 listens on
// MASTER_ADDR:MASTER_PORT, every other rank connects and presents the job token, its rank and
// the world size. Rank 0 lets no stranger in: a wrong token, a rank out of range or already
// taken, another world size or a malformed message is refused (the refused peer is told why,
// rank 0 logs it and keeps waiting for the real ranks). Once exactly world_size - 1 peers are
// in, rank 0 sends each the payload (the NCCL unique id: generic bytes). Every wait ends at
// the deadline of distributed.timeout_s: nobody coming is an error naming the missing ranks.
//
// Wire format, all integers little-endian u32:
//   peer -> rank 0:  "SSMR" version rank world_size token_length token
//   rank 0 -> peer:  "OKAY" payload_length payload     or     "FAIL" reason_length reason
#pragma once

#include <stdexcept>
#include <string>
#include <vector>

#include "distributed/bootstrap.h"
#include "distributed/socket.h"

namespace ssmtrain::dist {

// The rendezvous failed; what() says what and where (address, ranks, reason of a refusal).
class RendezvousError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct RendezvousOptions {
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
  std::string token;  // the job token every rank must present
  int rank = 0;
  int world_size = 1;
  double timeout_s = 600;
};

// What a rank holds after the rendezvous: the payload (rank 0's, on every rank) and the open
// connections: on rank 0 one per peer (index = the peer's rank; [0] unused), on a peer one to
// rank 0. The `tcp` backend keeps them for its collectives; others may drop them.
struct Rendezvous {
  std::string payload;
  std::vector<Socket> peers;  // rank 0 only
  Socket master;              // peers only
};

inline constexpr size_t kMaxTokenBytes = 4096;
inline constexpr size_t kMaxPayloadBytes = 1 << 20;

// The rendezvous of this rank from its launcher's environment (address, port, token, rank,
// world size) and distributed.timeout. Throws CommunicatorError naming distributed.backend:
// `backend` when several ranks have no job token (SSMTRAIN_JOB_TOKEN, or Slurm's job id).
RendezvousOptions rendezvous_options(const LaunchEnv& env, double timeout_s, const std::string& backend);

// Rank 0: listens on master_port (a `listener` already bound may be passed, e.g. on port 0 in
// tests) and returns once every peer is in. Other ranks: connect, present themselves, and
// return with rank 0's payload. Throws RendezvousError.
Rendezvous rendezvous(const RendezvousOptions& options, const std::string& payload = "",
                      Listener* listener = nullptr);

}  // namespace ssmtrain::dist
