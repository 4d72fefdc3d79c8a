output "elasticsearch_url" {
  description = "ES_URL for the homepage service and the pipeline (any data node; put an internal load balancer in front for production)"
  value       = "http://${aws_instance.data[0].private_ip}:9200"
}

output "data_node_ips" {
  description = "Private IPs of the data nodes"
  value       = aws_instance.data[*].private_ip
}

output "master_node_ips" {
  description = "Private IPs of the dedicated master-eligible nodes"
  value       = aws_instance.master[*].private_ip
}

output "kibana_url" {
  description = "Kibana (reachable from the admin network only)"
  value       = "http://${aws_instance.kibana.private_ip}:5601"
}
