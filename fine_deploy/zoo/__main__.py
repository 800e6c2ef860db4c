from fine_deploy.zoo import build_default

print(build_default())
