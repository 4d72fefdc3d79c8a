variable "region" {
  description = "AWS region of the cluster"
  type        = string
  default     = "us-east-1"
}

variable "availability_zones" {
  description = "Exactly three availability zones of the region (one master and one data node in each)"
  type        = list(string)
  default     = ["us-east-1a", "us-east-1b", "us-east-1c"]
  validation {
    condition     = length(var.availability_zones) == 3
    error_message = "The cluster spans exactly three availability zones."
  }
}

variable "environment" {
  description = "Environment name (prod, staging)"
  type        = string
  default     = "prod"
}

variable "vpc_cidr" {
  description = "CIDR of the cluster's VPC"
  type        = string
  default     = "10.40.0.0/16"
}

variable "client_cidrs" {
  description = "Private CIDRs allowed to reach Elasticsearch on 9200 (the homepage service, the pipeline). Never 0.0.0.0/0."
  type        = list(string)
  default     = ["10.40.0.0/16"]
  validation {
    condition     = !contains(var.client_cidrs, "0.0.0.0/0")
    error_message = "Elasticsearch must not be reachable from the internet."
  }
}

variable "admin_cidrs" {
  description = "Private CIDRs (VPN) allowed to reach Kibana on 5601"
  type        = list(string)
  default     = ["10.40.0.0/16"]
}

variable "elasticsearch_version" {
  description = "Elasticsearch and Kibana version (match the 8.x client the service pins)"
  type        = string
  default     = "8.14.3"
}

variable "ami_id" {
  description = "Hardened Linux AMI with the Elastic APT repository configured"
  type        = string
}

variable "master_instance_type" {
  description = "Dedicated master-eligible nodes: small, they only coordinate (Scribd ran t3a.small)"
  type        = string
  default     = "m6i.large"
}

variable "data_instance_type" {
  description = "Data nodes: compute-bound vector scoring (Scribd ran c5d.12xlarge)"
  type        = string
  default     = "c6id.4xlarge"
}

variable "kibana_instance_type" {
  description = "Kibana node"
  type        = string
  default     = "t3.medium"
}

variable "data_volume_gb" {
  description = "EBS gp3 data volume per data node (GB)"
  type        = number
  default     = 500
}

variable "heap_size" {
  description = "JVM heap of data nodes (at most half the RAM, below 31g)"
  type        = string
  default     = "15g"
}
