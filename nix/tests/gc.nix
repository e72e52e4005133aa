# The GC as a NixOS admin meets it: backdated rows go when aistack-gc.service runs, the
# archive restores them, and the timer is listed.
{ self }:
{
  name = "aistack-gc";

  nodes.machine = {
    imports = [ self.nixosModules.default ];
    virtualisation.memorySize = 3072;
    services.aiStack = {
      enable = true;
      metricsDirectory = "/var/lib/prometheus-node-exporter-text-files";
      validation.enable = true;
      gc.enable = true;
    };
    systemd.tmpfiles.rules = [ "d /var/lib/prometheus-node-exporter-text-files 0755 aistack aistack - -" ];
  };

  testScript =
    ''
      def learn(query, score):
          machine.succeed(
              "curl -sf -X POST http://127.0.0.1:8080/hybrid/learn -H 'Content-Type: application/json'"
              f" -d '{{\"query\": \"{query}\", \"solution\": \"s\", \"value_score\": {score}}}'"
          )

      def sql(statement):
          return machine.succeed(f"sudo -u aistack psql -tA aistack -c \"{statement}\"").strip()

      machine.wait_for_unit("aistack-gateway.service")
      machine.wait_for_open_port(8080)

      with subtest("timer listed"):
          # Matched here, not with `| grep -q`: grep stops reading at its match, and under
          # pipefail the writer's SIGPIPE (exit 141) would fail the command now and then.
          assert "aistack-gc.timer" in machine.succeed("systemctl list-timers")

      with subtest("backdated low-value rows are removed by a run"):
          learn("How do I enable flakes?", 0.3)
          learn("How do I configure the firewall?", 0.9)
          sql("UPDATE solved_issues SET created_at = now() - interval '40 days'")
          machine.succeed("systemctl start aistack-gc.service")
          assert sql("SELECT count(*) FROM solved_issues") == "1"
          assert sql("SELECT sum(cardinality(ids)) FROM solved_issues_archive") == "1"
          assert "event=gc.run" in machine.succeed("journalctl -u aistack-gc")
          metrics = machine.succeed("cat /var/lib/prometheus-node-exporter-text-files/aistack-gc.prom")
          assert 'hybrid_gc_solutions_deleted_total{reason="expired"} 1.0' in metrics, metrics

      with subtest("what was learned reads back; what the GC removed is a 404"):
          import json

          listing = json.loads(
              machine.succeed("curl -sf 'http://127.0.0.1:8080/hybrid/solutions?order=value'")
          )
          queries = [row["query"] for row in listing["results"]]
          assert queries == ["How do I configure the firewall?"], listing
          removed = machine.succeed(
              "curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:8080/hybrid/solutions/1"
          )
          assert removed == "404", removed

      with subtest("restore puts the row back"):
          machine.succeed("aistack-manage gc restore --run 1")
          assert sql("SELECT count(*) FROM solved_issues") == "2"
          back = machine.succeed("curl -sf http://127.0.0.1:8080/hybrid/solutions/1")
          assert json.loads(back)["query"] == "How do I enable flakes?", back
          status = machine.succeed("aistack-manage gc status")
          assert "run 1" in status, status

      with subtest("systemd-analyze security"):
          report = machine.succeed("systemd-analyze security aistack-gc.service")
          print(report)
          exposure = float(report.strip().splitlines()[-1].split(":")[1].split()[0])
          assert exposure <= 2.0, f"exposure {exposure}"
    '';
}
