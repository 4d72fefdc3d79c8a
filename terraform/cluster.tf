# 3 dedicated master-eligible nodes, 3 data nodes, 1 Kibana node, spread over three AZs.
locals {
  master_names = [for i in range(3) : "master-${i}"]
  seed_hosts   = join(",", [for i in range(3) : cidrhost(aws_subnet.private[i].cidr_block, 10)])
}

resource "aws_instance" "master" {
  count                  = 3
  ami                    = var.ami_id
  instance_type          = var.master_instance_type
  subnet_id              = aws_subnet.private[count.index].id
  private_ip             = cidrhost(aws_subnet.private[count.index].cidr_block, 10)
  vpc_security_group_ids = [aws_security_group.elasticsearch.id]
  iam_instance_profile   = aws_iam_instance_profile.node.name
  ebs_optimized          = true
  monitoring             = true

  metadata_options {
    http_tokens   = "required"
    http_endpoint = "enabled"
  }

  root_block_device {
    volume_type = "gp3"
    volume_size = 50
    encrypted   = true
  }

  user_data = templatefile("${path.module}/templates/elasticsearch.yml.tftpl", {
    cluster_name    = "facetrec-${var.environment}"
    node_name       = local.master_names[count.index]
    roles           = "[ master ]"
    seed_hosts      = local.seed_hosts
    initial_masters = join(",", local.master_names)
    version         = var.elasticsearch_version
    heap            = "2g"
    zone            = local.azs[count.index]
  })

  tags = { Name = "facetrec-${var.environment}-${local.master_names[count.index]}", role = "master" }
}

resource "aws_instance" "data" {
  count                  = 3
  ami                    = var.ami_id
  instance_type          = var.data_instance_type
  subnet_id              = aws_subnet.private[count.index].id
  vpc_security_group_ids = [aws_security_group.elasticsearch.id]
  iam_instance_profile   = aws_iam_instance_profile.node.name
  ebs_optimized          = true
  monitoring             = true

  metadata_options {
    http_tokens   = "required"
    http_endpoint = "enabled"
  }

  root_block_device {
    volume_type = "gp3"
    volume_size = 50
    encrypted   = true
  }

  ebs_block_device {
    device_name = "/dev/sdf"
    volume_type = "gp3"
    volume_size = var.data_volume_gb
    iops        = 6000
    throughput  = 500
    encrypted   = true
  }

  user_data = templatefile("${path.module}/templates/elasticsearch.yml.tftpl", {
    cluster_name    = "facetrec-${var.environment}"
    node_name       = "data-${count.index}"
    roles           = "[ data, ingest ]"
    seed_hosts      = local.seed_hosts
    initial_masters = join(",", local.master_names)
    version         = var.elasticsearch_version
    heap            = var.heap_size
    zone            = local.azs[count.index]
  })

  tags = { Name = "facetrec-${var.environment}-data-${count.index}", role = "data" }
}

resource "aws_instance" "kibana" {
  ami                    = var.ami_id
  instance_type          = var.kibana_instance_type
  subnet_id              = aws_subnet.private[0].id
  vpc_security_group_ids = [aws_security_group.kibana.id]
  iam_instance_profile   = aws_iam_instance_profile.node.name
  ebs_optimized          = true
  monitoring             = true

  metadata_options {
    http_tokens   = "required"
    http_endpoint = "enabled"
  }

  root_block_device {
    volume_type = "gp3"
    volume_size = 30
    encrypted   = true
  }

  user_data = templatefile("${path.module}/templates/kibana.yml.tftpl", {
    version = var.elasticsearch_version
    es_hosts = join(",", [for node in aws_instance.data : "http://${node.private_ip}:9200"])
  })

  tags = { Name = "facetrec-${var.environment}-kibana", role = "kibana" }
}
