# The gateway as a NixOS admin runs it: the roadmap's validation tests, 429, metrics,
# the journal, and systemd-analyze security.
{ self }:
{
  name = "aistack-gateway";

  nodes.machine = {
    imports = [ self.nixosModules.default ];
    virtualisation.memorySize = 3072;
    services.aiStack = {
      enable = true;
      validation = {
        enable = true;
        rateLimits = [ "20/minute" ];
      };
    };
  };

  testScript =
    ''
      import json

      def search(body, expect):
          out = machine.succeed(
              "curl -s -w '\\n%{http_code}' -X POST http://127.0.0.1:8080/vector/search"
              f" -H 'Content-Type: application/json' -d '{json.dumps(body)}'"
          )
          text, status = out.rsplit("\n", 1)
          assert status == str(expect), f"{body}: {status} {text}"
          return json.loads(text)

      machine.wait_for_unit("postgresql.service")
      machine.wait_for_unit("qdrant.service")
      machine.wait_for_unit("aistack-gateway.service")
      machine.wait_for_open_port(8080)

      with subtest("a sample corpus goes in"):
          corpus = machine.succeed(
              "find /nix/store -path '*aistack/demo/corpus.jsonl' | head -n1"
          ).strip()
          # aistack-manage: as the units run, with their user and the Qdrant key credential.
          machine.succeed(f"aistack-manage ingest --collection nixos_docs {corpus}")

      with subtest("roadmap: an 11 KB query is refused naming max_length"):
          answer = search({"collection": "nixos_docs", "query": "x" * 11000}, 422)
          assert "max_length" in answer["detail"], answer

      with subtest("roadmap: an unknown collection is refused"):
          answer = search({"collection": "evil_collection", "query": "x"}, 422)
          assert answer["detail"] == "collection: Unknown collection", answer

      with subtest("roadmap: a valid search is paginated"):
          answer = search(
              {"collection": "nixos_docs", "query": "install", "limit": 10, "offset": 20}, 200
          )
          assert answer["offset"] == 20 and len(answer["results"]) <= 10
          assert isinstance(answer["has_more"], bool)

      with subtest("the 21st request in a minute gets 429 with Retry-After"):
          for _ in range(20):
              machine.succeed("curl -s -o /dev/null -X POST http://127.0.0.1:8080/vector/search"
                              " -H 'Content-Type: application/json' -d '{}'")
          headers = machine.succeed(
              "curl -s -D - -o /dev/null -X POST http://127.0.0.1:8080/vector/search"
              " -H 'Content-Type: application/json' -d '{}'"
          )
          assert " 429 " in headers.splitlines()[0], headers
          assert "retry-after:" in headers.lower(), headers

      with subtest("metrics"):
          metrics = machine.succeed("curl -s http://127.0.0.1:8080/metrics")
          assert 'aidb_query_validation_failures_total{reason="unknown_collection"}' in metrics
          assert "aidb_query_size_bytes_bucket" in metrics
          assert "aistack_rate_limited_requests_total" in metrics

      with subtest("the journal shows the events"):
          # Matched here, not with `| grep -q`: grep stops reading at its match, and under
          # pipefail the writer's SIGPIPE (exit 141) would fail the command now and then.
          assert "event=gateway.started" in machine.succeed("journalctl -u aistack-gateway")

      with subtest("SIGHUP via systemctl reload keeps the unit up"):
          pid = machine.succeed("systemctl show -P MainPID aistack-gateway").strip()
          machine.succeed("systemctl reload aistack-gateway")
          machine.succeed("sleep 1")
          machine.succeed("systemctl is-active aistack-gateway")
          assert machine.succeed("systemctl show -P MainPID aistack-gateway").strip() == pid
          machine.succeed("curl -sf http://127.0.0.1:8080/healthz")
          assert "event=gateway.reloaded" in machine.succeed("journalctl -u aistack-gateway")

      with subtest("the local Qdrant answers only with the generated key"):
          machine.fail("curl -sf http://127.0.0.1:6333/collections")
          key = machine.succeed("cat /var/lib/aistack-qdrant-key/api-key").strip()
          assert len(key) == 64, key
          machine.succeed(f"curl -sf -H 'api-key: {key}' http://127.0.0.1:6333/collections")
          machine.fail("sudo -u aistack cat /var/lib/aistack-qdrant-key/api-key")

      with subtest("a crowd of idle sockets cannot exhaust the descriptors"):
          limit = machine.succeed("systemctl show -P LimitNOFILE aistack-gateway").strip()
          assert int(limit) >= 65536, limit

      with subtest("systemd-analyze security"):
          report = machine.succeed("systemd-analyze security aistack-gateway.service")
          print(report)
          exposure = float(report.strip().splitlines()[-1].split(":")[1].split()[0])
          assert exposure <= 2.0, f"exposure {exposure}"
    '';
}
